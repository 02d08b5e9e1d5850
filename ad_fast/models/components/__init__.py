"""Parts shared by the four methods (one copy each): ImageNet constants, user-input handling, backbone weight
files, the labelled prompt bank, the config field checks. Nothing here imports a method."""
