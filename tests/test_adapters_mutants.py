"""The knowledge adapters (model/adapters.py) against the structure the stage-1 checkpoints
carry, written out here: an adapter is Linear(d -> d/2) -> a Transformer of width d/2 with a
feed-forward of d/4 -> Linear(d/2 -> d), added to its input; a chain feeds each adapter
LN(x + h_i) with one LayerNorm shared by every step, starting from x = h_0."""
import torch
from torch import nn

from kuda_mmsa.model.adapters import Adapter, AdapterChain

D, L, B = 16, 5, 2


def test_an_adapter_has_the_checkpoints_shapes():
    a = Adapter(D, layers=2, heads=2, dropout=0.0)
    assert a.down.weight.shape == (D // 2, D) and a.up.weight.shape == (D, D // 2)
    assert len(a.encoder.layers) == 2
    ff_in, ff_out = a.encoder.layers[0].ff[0], a.encoder.layers[0].ff[-1]
    assert ff_in.weight.shape == (D // 4, D // 2) and ff_out.weight.shape == (D // 2, D // 4)
    tiny = Adapter(2, layers=1, heads=1, dropout=0.0)           # d/4 rounds down to 0: kept at 1
    assert tiny.encoder.layers[0].ff[0].weight.shape == (1, 1)


def test_an_adapter_adds_its_update_to_its_input():
    torch.manual_seed(0)
    a = Adapter(D, layers=1, heads=2, dropout=0.0).eval()
    x = torch.randn(B, L, D)
    pad = torch.tensor([[False] * L, [False] * 3 + [True] * 2])
    with torch.no_grad():
        want = x + a.up(a.encoder(a.down(x), pad))
        torch.testing.assert_close(a(x, pad), want)
        assert (a(x, pad) - x).abs().max() > 1e-3                # the update is not zero


def test_a_chain_feeds_each_adapter_the_shared_norm_of_state_plus_tap():
    torch.manual_seed(0)
    norm = nn.LayerNorm(D)
    chain = AdapterChain(D, count=3, layers=1, heads=2, dropout=0.0, norm=norm).eval()
    base, taps = torch.randn(B, L, D), [torch.randn(B, L, D) for _ in range(3)]
    with torch.no_grad():
        x = base
        for adapter, h in zip(chain.adapters, taps):
            x = adapter(norm(x + h), None)
        torch.testing.assert_close(chain(base, taps, None), x)
    assert chain.norm is norm                                      # shared with the branch, not a copy


def test_attention_probability_dropout_is_off_unless_asked():
    """Only the authors' dropout placement drops attention probabilities in the adapters."""
    chain = AdapterChain(D, count=1, layers=1, heads=2, dropout=0.1, norm=nn.LayerNorm(D))
    adapter = Adapter(D, layers=1, heads=2, dropout=0.1)
    for module in (chain, adapter):
        rates = [m.attn_dropout for m in module.modules() if hasattr(m, "attn_dropout")]
        assert rates and all(float(r) == 0.0 for r in rates), rates


def _linear_shapes(decoder):
    return [tuple(m.weight.shape) for m in decoder.mlp if isinstance(m, nn.Linear)]


def test_the_unimodal_decoder_narrows_from_the_encoder_width():
    """mean over time -> w -> p/2 -> p/4 -> p/8 -> 1, p the encoder's width: w = 2p with the
    adapters' knowledge concatenated, w = p without adapters; p = w/2 when not given."""
    from kuda_mmsa.model.adapters import UnimodalDecoder

    assert _linear_shapes(UnimodalDecoder(64, 0.0, 32)) == [(16, 64), (8, 16), (4, 8), (1, 4)]
    assert _linear_shapes(UnimodalDecoder(32, 0.0, 32)) == [(16, 32), (8, 16), (4, 8), (1, 4)]   # no adapters
    assert _linear_shapes(UnimodalDecoder(64, 0.0)) == [(16, 64), (8, 16), (4, 8), (1, 4)]
    torch.manual_seed(0)
    dec = UnimodalDecoder(D, 0.0, D).eval()
    u = torch.randn(B, L, D)
    pad = torch.tensor([[False] * L, [False] * 2 + [True] * 3])
    with torch.no_grad():
        means = torch.stack([u[0].mean(0), u[1, :2].mean(0)])
        torch.testing.assert_close(dec(u, pad), dec.mlp(means))
