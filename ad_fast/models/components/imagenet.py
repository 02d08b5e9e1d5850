"""ImageNet normalisation constants (RGB), used by every pretrained backbone of ad_fast."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
