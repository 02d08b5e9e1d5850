"""OneNIP decoder ablations (spec §2.8 a/b, Tab. 4a): UniAD's layer-wise query decoder and the static-prompt decoder.

Wiring is checked with forward hooks on a small transformer; training, prediction and checkpoints use the same
generated two-class data and randomly initialised backbone as ``test_onenip.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ad_fast.models.onenip import OneNIP
from ad_fast.models.onenip.attention import neighbour_mask
from ad_fast.models.onenip.reconstruction import Reconstruction
from ad_fast.models.onenip.transformer import QueryLayer, Transformer
from test_onenip import (SIZE, _explicit_attention, _generated_images, _normal_and_anomalous_errors,
                         _release_state_dict, train_briefly)

VARIANTS = ["uniad_query", "unidirectional"]
DIM, HEADS, DEPTH = 32, 4, 3
HEIGHT, WIDTH = 3, 4  # N = 12 tokens


def _small_transformer(variant: str) -> Transformer:
    return Transformer(DIM, HEADS, 64, encoder_depth=2, decoder_depth=DEPTH, variant=variant,
                       num_tokens=HEIGHT * WIDTH).eval()


def _decoder_calls(transformer: Transformer, image: torch.Tensor, prompt: torch.Tensor):
    """Run ``transformer`` → (encoder output, per-block (query, encoded, decoded, output), final output)."""
    pos = torch.randn(HEIGHT * WIDTH, 1, DIM, generator=torch.Generator().manual_seed(0))
    mask = neighbour_mask(HEIGHT, WIDTH)
    encoded, calls = [], []
    hooks = [transformer.encoder.register_forward_hook(lambda m, args, out: encoded.append(out))]
    hooks += [layer.register_forward_hook(lambda m, args, out: calls.append((*args[:3], out)))
              for layer in transformer.decoder.layers]
    try:
        with torch.no_grad():
            out = transformer(image, prompt, pos, mask)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(encoded) == 1 and len(calls) == DEPTH
    return encoded[0], calls, out


# --------------------------------------------------------------------------------------- decoder wiring
def test_query_layer_matches_explicit_post_norm_math():
    torch.manual_seed(3)
    layer = QueryLayer(DIM, HEADS, 64, 0.1).eval()
    query, encoded, decoded = (torch.randn(12, 2, DIM) for _ in range(3))
    pos, mask = torch.randn(12, 1, DIM), neighbour_mask(HEIGHT, WIDTH)
    with torch.no_grad():
        q = layer.norm1(query + _explicit_attention(layer.attn_query_to_encoded, query + pos, encoded + pos,
                                                    encoded, mask))
        x = layer.norm2(q + _explicit_attention(layer.attn_query_to_decoded, q + pos, decoded + pos, decoded, mask))
        expected = layer.norm3(x + layer.linear2(F.relu(layer.linear1(x))))
        torch.testing.assert_close(layer(query, encoded, decoded, pos, mask), expected, rtol=1e-5, atol=1e-5)


def test_uniad_query_learns_one_query_per_block_over_a_fixed_encoding():
    torch.manual_seed(4)
    transformer = _small_transformer("uniad_query")
    queries = transformer.decoder.queries
    assert len(queries) == DEPTH and all(q.shape == (HEIGHT * WIDTH, DIM) and q.requires_grad for q in queries)
    image, prompt = torch.randn(12, 2, DIM), torch.randn(12, 2, DIM)
    encoded, calls, out = _decoder_calls(transformer, image, prompt)
    assert encoded.shape == (12, 2, DIM)  # the prompt is not encoded
    for i, (query, memory, decoded, _) in enumerate(calls):
        assert torch.equal(query, queries[i].detach().unsqueeze(1).expand(-1, 2, -1))
        assert torch.equal(memory, encoded)  # x_e stays fixed across the blocks
        assert torch.equal(decoded, encoded if i == 0 else calls[i - 1][3])  # x_d^0 = x_e, then the chain
    torch.testing.assert_close(out, transformer.decoder.norm(calls[-1][3]))
    _, _, other_prompt = _decoder_calls(transformer, image, torch.randn(12, 2, DIM))
    assert torch.equal(out, other_prompt)  # no prompt in UniAD's decoder


def test_unidirectional_queries_every_block_with_the_same_encoded_prompt():
    torch.manual_seed(5)
    transformer = _small_transformer("unidirectional")
    assert transformer.decoder.queries is None
    image, prompt = torch.randn(12, 2, DIM), torch.randn(12, 1, DIM)  # one prompt shared by both targets
    encoded, calls, out = _decoder_calls(transformer, image, prompt)
    x_e, p_e = encoded[:, :2], encoded[:, 2:].expand(-1, 2, -1)
    for i, (query, memory, decoded, _) in enumerate(calls):
        assert torch.equal(query, p_e)  # static prompt: never updated by the decoder
        assert torch.equal(memory, x_e)
        assert torch.equal(decoded, x_e if i == 0 else calls[i - 1][3])
    torch.testing.assert_close(out, transformer.decoder.norm(calls[-1][3]))
    _, _, other_prompt = _decoder_calls(transformer, image, torch.randn(12, 1, DIM))
    assert not torch.allclose(out, other_prompt)


def test_uniad_query_has_uniad_parameter_count():
    # Spec §2.13: UniAD with OneNIP's config (224 px, 14 x 14 tokens) has 7,717,392 parameters; ours adds the refiner.
    network = Reconstruction((14, 14), decoder_variant="uniad_query")
    count = sum(p.numel() for name, p in network.named_parameters() if not name.startswith("seghead."))
    assert count == 7_717_392


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_output_shapes(variant):
    network = Reconstruction((4, 4), decoder_variant=variant).eval()
    with torch.no_grad():
        reconstruction, logits = network(torch.randn(4, 272, 4, 4), torch.randn(2, 272, 4, 4))
    assert reconstruction.shape == (4, 272, 4, 4) and logits.shape == (4, 1, 16, 16)


# --------------------------------------------------------------------------- training, predict, checkpoints
@pytest.fixture(scope="module")
def train_images() -> dict[str, list[torch.Tensor]]:
    return {"stripes": _generated_images("stripes", 6, 0), "blob": _generated_images("blob", 6, 1)}


@pytest.fixture(scope="module", params=VARIANTS)
def trained(request, train_images):
    """(model of the variant after a few training steps, held-out images, normal-region errors before training)."""
    model, held_out, before, history = train_briefly(train_images, decoder_variant=request.param)
    assert all(np.isfinite(history["loss"]))
    return model, held_out, before


def test_variant_training_lowers_error_on_normal_below_anomalous_regions(trained):
    model, held_out, before = trained
    normal, anomalous = _normal_and_anomalous_errors(model, held_out, seed=7)
    assert normal.size >= 3
    assert normal.mean() < before.mean()
    assert anomalous.mean() > 2 * normal.mean()
    assert (anomalous > normal).mean() >= 0.8


def test_variant_predicts_and_round_trips(trained, train_images, tmp_path):
    model = trained[0]
    images = train_images["stripes"][:2] + train_images["blob"][:1]
    expected = model.predict(images)
    assert expected.anomaly_map.shape == (3, 1, SIZE, SIZE) and expected.pred_score.shape == (3,)
    assert torch.isfinite(expected.anomaly_map).all()
    path = tmp_path / "variant.safetensors"
    model.save(path)
    loaded = OneNIP.from_pretrained(path)
    assert loaded.config == model.config and loaded.config.decoder_variant == model.config.decoder_variant
    got = loaded.predict(images)
    torch.testing.assert_close(got.anomaly_map, expected.anomaly_map)
    torch.testing.assert_close(got.pred_score, expected.pred_score)


@pytest.mark.parametrize("variant", VARIANTS)
def test_release_checkpoint_into_a_variant_names_the_decoder(variant, tmp_path):
    path = tmp_path / "ckpt.pkl"
    torch.save({"state_dict": _release_state_dict()}, path)
    with pytest.raises(ValueError, match=f"decoder_variant='{variant}'.*'v2_fixed' or 'v1_paper'"):
        OneNIP.from_pretrained(path, decoder_variant=variant)


def test_variant_checkpoint_loaded_as_another_variant_names_the_decoder(tmp_path):
    path = tmp_path / "uniad.pt"
    OneNIP(img_size=SIZE, decoder_variant="uniad_query").save(path)
    with pytest.raises(ValueError, match="unexpected key.*decoder_variant='unidirectional'"):
        OneNIP.from_pretrained(path, decoder_variant="unidirectional")
