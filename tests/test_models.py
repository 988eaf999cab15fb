"""Generator / Discriminator against DESIGN §2: parameter counts, fade-in semantics, shapes."""
import pytest
import torch

from progan_fast import ops
from torch.utils._python_dispatch import TorchDispatchMode

from progan_fast.models import Discriminator, Generator, count_parameters, nf, use_channels_last

# DESIGN §2 table: fmap_base=2048, fmap_max=512, latent 512, RGB (G, D millions).
TABLE = {4: (6.56, 6.55), 8: (11.2, 11.2), 16: (13.05, 13.04), 32: (13.49, 13.48), 64: (13.59, 13.60),
         128: (13.62, 13.62)}


def _hand_count_g(res):
    """Independent count from the layer list of G_paper (with every toRGB up to `res`)."""
    c = lambda r: nf(r - 1, 2048)  # noqa: E731  channels of the block at 2**r
    total = 512 * c(2) * 16 + c(2) + (c(2) * c(2) * 9 + c(2)) + (c(2) * 3 + 3)
    r = 3
    while 2 ** r <= res:
        total += c(r - 1) * c(r) * 9 + c(r) + c(r) * c(r) * 9 + c(r) + c(r) * 3 + 3
        r += 1
    return total


def test_nf_matches_design():
    assert [nf(r - 1) for r in range(2, 11)] == [512, 512, 512, 512, 256, 128, 64, 32, 16]


def test_parameter_counts_match_design_table():
    G, D = Generator(128, 3, fmap_base=2048), Discriminator(128, 3, fmap_base=2048)
    assert G.latent_size == 512
    for res, (g_m, d_m) in TABLE.items():
        r = res.bit_length() - 1
        g, d = count_parameters(G, r), count_parameters(D, r)
        assert g == _hand_count_g(res)
        if res == 8:  # the table prints 11.2 for 11.28M: truncated to 3 significant digits
            assert int(g / 1e5) / 10 == 11.2 and int(d / 1e5) / 10 == 11.2
            continue
        assert abs(g / 1e6 - g_m) / g_m < 0.005, (res, g)
        assert abs(d / 1e6 - d_m) / d_m < 0.005, (res, d)


def _small():
    G = Generator(32, 3, fmap_base=128, fmap_max=32, latent_size=16).double()
    D = Discriminator(32, 3, fmap_base=128, fmap_max=32).double()
    for p in list(G.parameters()) + list(D.parameters()):  # nonzero biases so nothing hides
        if p.ndim == 1:
            torch.nn.init.normal_(p)
    return G, D


@pytest.mark.parametrize("r", [3, 4, 5])
def test_generator_fade_endpoints(r):
    G, _ = _small()
    z = torch.randn(4, 16, dtype=torch.float64)
    prev = G(z, r - 1, 1.0)
    torch.testing.assert_close(G(z, r, 0.0), ops.reference.upsample2x(prev))
    half = G(z, r, 0.5)
    torch.testing.assert_close(half, 0.5 * G(z, r, 1.0) + 0.5 * ops.reference.upsample2x(prev))
    torch.testing.assert_close(G(z, r, torch.tensor(1.0, dtype=torch.float64)), G(z, r, 1.0))


@pytest.mark.parametrize("r", [3, 4, 5])
def test_discriminator_fade_endpoints(r):
    _, D = _small()
    x = torch.randn(4, 3, 2 ** r, 2 ** r, dtype=torch.float64)
    torch.testing.assert_close(D(x, r, 0.0), D(ops.downsample2x(x), r - 1, 1.0))
    assert not torch.allclose(D(x, r, 1.0), D(x, r, 0.0))


def test_generator_latents_are_pixel_normalized():
    G, _ = _small()
    z = torch.randn(4, 16, dtype=torch.float64)
    torch.testing.assert_close(G(z, 3), G(z * 7.5, 3))  # scale of z is normalized away


def test_shapes_and_errors():
    G, D = Generator(16, 1, fmap_base=64, fmap_max=16), Discriminator(16, 1, fmap_base=64, fmap_max=16)
    z = torch.randn(8, G.latent_size)
    assert G(z).shape == (8, 1, 16, 16)
    assert D(G(z)).shape == (8, 1)
    with pytest.raises(ValueError, match="power of two"):
        Generator(48, 3)
    with pytest.raises(ValueError, match="res_log2"):
        G(z, 5)
    with pytest.raises(ValueError, match="expected images"):
        D(torch.randn(8, 1, 8, 8), 4)


def test_minibatch_stddev_channel_in_d():
    _, D = _small()
    assert D.conv4.weight.shape[1] == D.nf(1) + 1


class _ConvInputs(TorchDispatchMode):
    """Records the activation and weight of every convolution that runs."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.convolution_backward):
            self.seen.append((str(func.overloadpacket), args[0] if func.overloadpacket is torch.ops.aten.convolution
                              else args[1], args[1] if func.overloadpacket is torch.ops.aten.convolution else args[2]))
        return func(*args, **(kwargs or {}))


def _channels_last(t):
    return t.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("fused_scale", [False, True])
def test_use_channels_last_keeps_every_conv_in_channels_last(fused_scale):
    """After use_channels_last, every conv of G and of D (forward and backward, on G's output too)
    sees channels_last activations and weights: no layer falls back to NCHW."""
    torch.manual_seed(0)
    G = Generator(16, fmap_base=64, fmap_max=16, fused_scale=fused_scale)
    D = Discriminator(16, fmap_base=64, fmap_max=16, fused_scale=fused_scale)
    use_channels_last(G, D)
    assert G.channels_last
    rec = _ConvInputs()
    with rec:
        img = G(torch.randn(4, G.latent_size), 4, 0.5)
        D(img, 4, 0.5).sum().backward()
    assert len(rec.seen) > 10
    bad = [(name, tuple(x.shape)) for name, x, w in rec.seen
           if x.shape[1] > 1 and x.shape[2] * x.shape[3] > 1 and not (_channels_last(x) and _channels_last(w))]
    assert not bad, f"convs off channels_last: {bad}"
    use_channels_last(G, D, enabled=False)
    assert not G.channels_last and all(p.is_contiguous() for p in G.parameters())


@pytest.mark.parametrize("amp", [False, True])
def test_models_compile_as_one_graph(amp):
    """torch.compile(fullgraph=True) traces G and D whole under the default backend (and autocast):
    Dynamo in torch 2.11 could not trace the backend lookups' ContextVar.get nor
    torch.amp.is_autocast_available, so every op call broke the graph (19 graphs for this G)."""
    G = Generator(resolution=16, num_channels=3, fmap_base=256, fmap_max=32, latent_size=32)
    D = Discriminator(resolution=16, num_channels=3, fmap_base=256, fmap_max=32)
    z, x = torch.randn(4, 32), torch.randn(4, 3, 16, 16)
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        for net, args in ((G, (z, 4, 0.5)), (D, (x, 4, 0.5))):
            compiled = torch.compile(net, fullgraph=True, backend="eager")
            torch.testing.assert_close(compiled(*args), net(*args))
