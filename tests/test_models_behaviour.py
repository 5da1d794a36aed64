"""Behaviour of attentions.py / models.py beyond the golden tensors: batch size 1, max_len, the reference
encoder path (no speaker table), weight-norm removal, configuration errors and the attention options. All on
the tiny config (the kit's dev shape) with seeded weights and random inputs: no reference numbers, no kit."""

from __future__ import annotations

import json
import math

import pytest
import torch
from model_nets import assert_exact, assert_float_close, patch_random_to_zeros, random_batch

import attentions
import models
from data_utils import Batch
from text.symbols import symbols

TEXT_INPUTS = ("x", "x_lengths", "sid", "tone", "language", "bert", "ja_bert", "en_bert")
ZERO_NOISE = {"noise_scale": 0.0, "noise_scale_w": 0.0}


@pytest.fixture(scope="module")
def local_net_g(tiny_model_config: dict):
    """The tiny config's generator (the kit's dev shape), seeded, every weight slightly perturbed so that the
    zero-initialised output layers (flows, duration predictors) are not the identity; in eval mode."""
    torch.manual_seed(0)
    net = models.build_generator(tiny_model_config, for_training=True).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * (torch.rand(p.shape, generator=generator) - 0.5))
    return net


@pytest.fixture(scope="module")
def local_text(tiny_model_config: dict) -> dict:
    """A random two-item text batch in the shapes of the kit's golden inputs."""
    return _text(random_batch(tiny_model_config, len(symbols), [17, 12], [60, 45]))


def _text(batch: Batch) -> dict:
    return {
        "x": batch.text, "x_lengths": batch.text_lengths, "sid": batch.sid, "tone": batch.tone,
        "language": batch.language, "bert": batch.bert, "ja_bert": batch.ja_bert, "en_bert": batch.en_bert,
    }  # fmt: skip


def _item(inputs: dict, index: int, names=TEXT_INPUTS) -> dict:
    """One batch item, cut to its own length (so batch size 1 without padding)."""
    length = int(inputs["x_lengths"][index])
    item = {}
    for name in names:
        value = inputs[name][index : index + 1]
        if name in ("x", "tone", "language"):
            value = value[:, :length]
        elif name in ("bert", "ja_bert", "en_bert"):
            value = value[:, :, :length]
        item[name] = value
    return item


def _training_forward(net, text: dict, spec: torch.Tensor, spec_lengths: torch.Tensor, sid: torch.Tensor | None):
    return net(
        text["x"], text["x_lengths"], spec, spec_lengths, sid,
        text["tone"], text["language"], text["bert"], text["ja_bert"], text["en_bert"],
    )  # fmt: skip


def test_infer_batch_of_one_matches_batched(local_net_g, local_text: dict, tiny_model_config: dict) -> None:
    """Each item inferred alone (cut to its own length) gives the batched call's alignment and latents. (The
    batched call itself is compared with the reference's in test_model_golden.)"""
    hop = tiny_model_config["data"]["hop_length"]
    with torch.no_grad():
        batched_o, batched_attn, batched_mask, (batched_z, *_rest) = local_net_g.infer(**local_text, **ZERO_NOISE)
    y_lengths = batched_mask.sum([1, 2]).long()
    assert y_lengths[0] != y_lengths[1], "the two items should decode to different lengths"
    longest = int(y_lengths.argmax())
    for index in range(2):
        n_frames = int(y_lengths[index])
        length = int(local_text["x_lengths"][index])
        with torch.no_grad():
            o, attn, y_mask, (z, *_rest) = local_net_g.infer(**_item(local_text, index), **ZERO_NOISE)
        assert o.shape == (1, 1, n_frames * hop)
        assert_exact(attn, batched_attn[index : index + 1, :, :n_frames, :length], f"attn[{index}]")
        assert_float_close(z, batched_z[index : index + 1, :, :n_frames], f"z[{index}]")
        if index == longest:
            # The longest item has no padding in the batch either; shorter items' last samples see the
            # decoder's response to padded frames in the batch, so only the longest is compared sample by sample.
            assert_float_close(o, batched_o[index : index + 1], f"o[{index}]")


def test_infer_max_len_truncates_decoded_frames(local_net_g, local_text: dict, tiny_model_config: dict) -> None:
    hop = tiny_model_config["data"]["hop_length"]
    with torch.no_grad():
        _, _, full_mask, (full_z, *_rest) = local_net_g.infer(**local_text, **ZERO_NOISE)
        o, _, y_mask, (z, *_rest) = local_net_g.infer(**local_text, max_len=5, **ZERO_NOISE)
        decoded_head = local_net_g.dec((z * y_mask)[:, :, :5], g=local_net_g.emb_g(local_text["sid"]).unsqueeze(-1))
    assert o.shape == (2, 1, 5 * hop)
    assert full_mask.shape[-1] > 5
    assert z.shape[-1] == y_mask.shape[-1] == full_mask.shape[-1]  # only decoding is truncated
    assert_float_close(z, full_z, "z")
    torch.testing.assert_close(o, decoded_head)


def test_random_draws_go_through_torch_functions(
    local_net_g, local_text: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With torch's draws patched to zero, non-zero noise scales give the noise-free output: every random draw
    of inference goes through the patched torch functions (the kit's zero-random patch relies on this)."""
    with torch.no_grad():
        noise_free, *_ = local_net_g.infer(**local_text, noise_scale=0.0, noise_scale_w=0.0, sdp_ratio=1.0)
        noisy, *_ = local_net_g.infer(**local_text, noise_scale=0.667, noise_scale_w=0.8, sdp_ratio=1.0)
    assert noisy.shape != noise_free.shape or not torch.allclose(noisy, noise_free), "the noise should matter"
    patch_random_to_zeros(monkeypatch)
    with torch.no_grad():
        o, *_ = local_net_g.infer(**local_text, noise_scale=0.667, noise_scale_w=0.8, sdp_ratio=1.0)
    assert_float_close(o, noise_free, "o")


def test_training_forward_with_batch_of_one(local_net_g, tiny_model_config: dict) -> None:
    spec_length, text_length = 45, 12
    batch = random_batch(tiny_model_config, len(symbols), [text_length], [spec_length])
    with torch.no_grad():
        out = _training_forward(local_net_g, _text(batch), batch.spec, batch.spec_lengths, batch.sid)
    segment = tiny_model_config["train"]["segment_size"]
    assert out.o.shape == (1, 1, segment) and torch.isfinite(out.o).all()
    assert out.attn.shape == (1, 1, spec_length, text_length)
    # A monotonic hard alignment: every frame belongs to exactly one phone.
    assert torch.equal(out.attn.sum(-1), torch.ones(1, 1, spec_length))
    assert out.l_length.shape == (1,) and torch.isfinite(out.l_length).all()


def test_generator_remove_weight_norm_keeps_output(local_net_g, tiny_model_config: dict) -> None:
    decoder = models.build_generator(tiny_model_config, for_training=True).dec.eval()
    decoder.load_state_dict(local_net_g.dec.state_dict())
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2, tiny_model_config["model"]["inter_channels"], 31, generator=generator)
    g = local_net_g.emb_g(torch.tensor([1, 3])).unsqueeze(-1)
    with torch.no_grad():
        before = decoder(z, g=g)
        decoder.remove_weight_norm()
        after = decoder(z, g=g)
    assert not any(key.endswith(("weight_g", "weight_v")) for key in decoder.state_dict())
    assert_float_close(after, before, "decoder output", atol=1e-5)


@pytest.mark.parametrize("resblock", ["1", "2"])
def test_decoder_inference_in_rows_equals_the_channel_major_pass(resblock: str, tiny_model_config: dict) -> None:
    """Without gradients on the CPU, a folded decoder runs its convolutions over time-major rows (oneDNN's fast
    layout); the waveform is the channel-major pass's to float rounding, in the usual [b, 1, t] layout."""
    config = json.loads(json.dumps(tiny_model_config))
    config["model"]["resblock"] = resblock
    torch.manual_seed(2)
    decoder = models.build_generator(config, for_training=False).dec.eval()
    decoder.remove_weight_norm()
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2, config["model"]["inter_channels"], 23, generator=generator)
    g = torch.randn(2, config["model"]["gin_channels"], 1, generator=generator)
    with torch.no_grad():
        assert decoder._runs_in_rows(z)
        rows = decoder(z, g=g)
    channel_major = decoder(z, g=g)  # with gradients: the training layout
    assert not decoder._runs_in_rows(z) and rows.shape == channel_major.shape and rows.is_contiguous()
    assert_float_close(rows, channel_major.detach(), "decoder output", atol=1e-5)


def test_reference_encoder_replaces_speaker_table(tiny_model_config: dict) -> None:
    config = json.loads(json.dumps(tiny_model_config))
    config["data"]["n_speakers"] = 0
    torch.manual_seed(0)
    net = models.build_generator(config, for_training=True).eval()
    assert not hasattr(net, "emb_g") and hasattr(net, "ref_enc")
    batch = random_batch(tiny_model_config, len(symbols), [17, 12], [60, 45])
    text = _text(batch)
    with torch.no_grad():
        with pytest.raises(ValueError, match="ReferenceEncoder"):
            net.infer(**text)
        o, _, y_mask, _ = net.infer(**text, y=batch.spec, **ZERO_NOISE)
        out = _training_forward(net, text, batch.spec, batch.spec_lengths, None)
    assert o.shape[-1] == y_mask.shape[-1] * config["data"]["hop_length"]
    assert out.g.shape == (2, config["model"]["gin_channels"], 1)


def test_speaker_conditioning_layer_must_exist() -> None:
    with pytest.raises(ValueError, match="cond_layer_idx"):
        attentions.Encoder(16, 32, 2, 2, 3, gin_channels=8)
    with pytest.raises(ValueError, match="cond_layer_idx"):
        attentions.Encoder(16, 32, 2, 4, 3, gin_channels=8, cond_layer_idx=4)
    encoder = attentions.Encoder(16, 32, 2, 2, 3, gin_channels=8, cond_layer_idx=1)
    assert encoder.spk_emb_linear.in_features == 8
    assert not hasattr(attentions.Encoder(16, 32, 2, 2, 3), "spk_emb_linear")


def test_encoder_speaker_embedding_enters_at_cond_layer() -> None:
    torch.manual_seed(0)
    encoder = attentions.Encoder(16, 32, 2, 3, 3, gin_channels=8).eval()
    x = torch.randn(1, 16, 7)
    mask = torch.ones(1, 1, 7)
    with torch.no_grad():
        plain = encoder(x, mask)
        conditioned = encoder(x, mask, g=torch.randn(1, 8, 1))
        # Zeroing the projection makes the speaker input a no-op.
        encoder.spk_emb_linear.weight.zero_()
        encoder.spk_emb_linear.bias.zero_()
        neutral = encoder(x, mask, g=torch.randn(1, 8, 1))
    assert not torch.allclose(plain, conditioned)
    torch.testing.assert_close(neutral, plain)


def test_padding_does_not_change_valid_positions() -> None:
    torch.manual_seed(0)
    encoder = attentions.Encoder(16, 32, 2, 2, 3).eval()
    x = torch.randn(1, 16, 5)
    padded = torch.cat([x, torch.randn(1, 16, 3)], dim=2)
    mask = torch.cat([torch.ones(1, 1, 5), torch.zeros(1, 1, 3)], dim=2)
    with torch.no_grad():
        short = encoder(x, torch.ones(1, 1, 5))
        long = encoder(padded, mask)
    torch.testing.assert_close(long[..., :5], short, atol=1e-5, rtol=1e-5)
    assert torch.equal(long[..., 5:], torch.zeros(1, 16, 3))


def test_causal_ffn_ignores_the_future() -> None:
    torch.manual_seed(0)
    ffn = attentions.FFN(4, 4, 8, 3, causal=True, activation="gelu")
    x = torch.randn(1, 4, 6)
    changed = x.clone()
    changed[..., 4:] += 1.0
    mask = torch.ones(1, 1, 6)
    torch.testing.assert_close(ffn(x, mask)[..., :4], ffn(changed, mask)[..., :4])


def test_attention_proximal_options() -> None:
    torch.manual_seed(0)
    attention = attentions.MultiHeadAttention(8, 8, 2, window_size=4, proximal_bias=True, proximal_init=True)
    assert torch.equal(attention.conv_k.weight, attention.conv_q.weight)
    bias = attention._proximal_bias(3, torch.device("cpu"), torch.float32)
    expected = -torch.log1p(torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]]))
    torch.testing.assert_close(bias, expected.view(1, 1, 3, 3))
    x = torch.randn(2, 8, 1)  # shorter than the window
    assert attention(x, x, torch.ones(2, 1, 1, 1)).shape == (2, 8, 1)


@pytest.mark.parametrize("share_parameter", [False, True])
def test_transformer_flow_is_invertible(share_parameter: bool) -> None:
    torch.manual_seed(0)
    flow = models.TransformerCouplingBlock(
        8, 16, 32, 2, 3, 5, 0.0, n_flows=2, gin_channels=4, share_parameter=share_parameter
    )
    _perturb_zero_initialised_layers(flow)
    encoders = {id(layer.enc) for layer in flow.flows if hasattr(layer, "enc")}
    assert len(encoders) == (1 if share_parameter else 2)
    _assert_invertible(flow, channels=8, gin=4)


def test_residual_flow_is_invertible() -> None:
    torch.manual_seed(0)
    flow = models.ResidualCouplingBlock(8, 16, 5, 1, 2, n_flows=4, gin_channels=4)
    _perturb_zero_initialised_layers(flow)
    _assert_invertible(flow, channels=8, gin=4)


def _perturb_zero_initialised_layers(flow: torch.nn.Module) -> None:
    """Freshly built couplings are identities (zero output layer); give them something to invert."""
    with torch.no_grad():
        for layer in flow.flows:
            if hasattr(layer, "post"):
                layer.post.weight.normal_(0.0, 0.1)
                layer.post.bias.normal_(0.0, 0.1)


def _assert_invertible(flow: torch.nn.Module, channels: int, gin: int) -> None:
    x = torch.randn(2, channels, 9)
    mask = torch.ones(2, 1, 9)
    mask[1, :, 6:] = 0
    x = x * mask
    g = torch.randn(2, gin, 1)
    with torch.no_grad():
        z = flow(x, mask, g=g)
        restored = flow(z, mask, g=g, reverse=True)
    assert not torch.allclose(z, x)
    torch.testing.assert_close(restored, x, atol=1e-5, rtol=1e-5)


def _plain_scores(z_p: torch.Tensor, m_p: torch.Tensor, logs_p: torch.Tensor) -> torch.Tensor:
    """The MAS scores written as plain ops, which autocast would run in half precision."""
    s_p_sq_r = torch.exp(-2 * logs_p)
    return (
        torch.sum(-0.5 * math.log(2 * math.pi) - logs_p, [1], keepdim=True)
        + torch.matmul(-0.5 * (z_p**2).transpose(1, 2), s_p_sq_r)
        + torch.matmul(z_p.transpose(1, 2), m_p * s_p_sq_r)
        + torch.sum(-0.5 * (m_p**2) * s_p_sq_r, [1], keepdim=True)
    )


def _extreme_prior(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """192 channels (the official inter_channels) and log standard deviations near -6: fp16 overflows."""
    generator = torch.Generator().manual_seed(seed)
    z_p = 3.0 * torch.randn(2, 192, 60, generator=generator)
    m_p = torch.randn(2, 192, 20, generator=generator)
    logs_p = -6.0 + 0.5 * torch.randn(2, 192, 20, generator=generator)
    return z_p, m_p, logs_p


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mas_scores_stay_float32_and_finite_under_autocast(dtype: torch.dtype) -> None:
    z_p, m_p, logs_p = _extreme_prior()
    expected = models.mas_log_likelihood(z_p, m_p, logs_p)
    assert torch.isfinite(expected).all()
    with torch.autocast("cpu", dtype=dtype):
        plain = _plain_scores(z_p, m_p, logs_p)
        scores = models.mas_log_likelihood(z_p, m_p, logs_p)
        half_inputs = models.mas_log_likelihood(z_p.to(dtype), m_p.to(dtype), logs_p.to(dtype))
    # The precondition that makes this test bite: in autocast the plain formula breaks (fp16: overflow to
    # inf/NaN; bf16: scores of 1e7 off by far more than the gaps between neighbouring phones).
    assert not torch.isfinite(plain).all() if dtype == torch.float16 else (plain - expected).abs().max() > 1.0
    assert scores.dtype == torch.float32 and torch.equal(scores, expected)
    assert half_inputs.dtype == torch.float32 and torch.isfinite(half_inputs).all()


def test_mas_scores_in_float32_are_the_reference_formula() -> None:
    z_p, m_p, logs_p = _extreme_prior(1)
    logs_p = logs_p + 5.0  # ordinary magnitudes
    assert torch.equal(models.mas_log_likelihood(z_p, m_p, logs_p), _plain_scores(z_p, m_p, logs_p))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_alignment_under_autocast_equals_float32(local_net_g, dtype: torch.dtype) -> None:
    """The training forward's alignment (with its noise) is the float32 one under half-precision autocast."""
    z_p, m_p, logs_p = _extreme_prior(2)
    z_p, m_p, logs_p = z_p[:, :32], m_p[:, :32], logs_p[:, :32]  # the tiny net's inter_channels
    x_mask = (torch.arange(20) < torch.tensor([[20], [14]])).float().unsqueeze(1)
    y_mask = (torch.arange(60) < torch.tensor([[60], [41]])).float().unsqueeze(1)
    torch.manual_seed(0)
    expected = local_net_g._monotonic_alignment(z_p, m_p, logs_p, x_mask, y_mask)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=dtype):
        attn = local_net_g._monotonic_alignment(z_p, m_p, logs_p, x_mask, y_mask)
    assert torch.equal(attn, expected)
    assert torch.equal(attn.sum(-1), y_mask)  # every valid frame belongs to exactly one phone


def test_stochastic_duration_noise_comes_from_the_cpu_generator(local_net_g, local_text: dict) -> None:
    """Reverse-mode noise drawn by the predictor is torch.randn([b, 2, t]) on the CPU generator, as the reference
    (so every device gets the same numbers from a seed)."""
    sdp = local_net_g.sdp
    x = torch.randn(2, 32, 17, generator=torch.Generator().manual_seed(3))
    x_mask = (torch.arange(17) < torch.tensor([[17], [12]])).float().unsqueeze(1)
    g = torch.randn(2, 32, 1, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(9)
    noise = torch.randn(2, 2, 17)
    with torch.no_grad():
        expected = sdp(x, x_mask, g=g, reverse=True, noise_scale=1.0, noise=noise)
        torch.manual_seed(9)
        drawn = sdp(x, x_mask, g=g, reverse=True, noise_scale=1.0)
    assert torch.equal(drawn, expected)
