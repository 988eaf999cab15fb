"""bench/flops.py: the analytic layer list reproduces the paper's parameter counts (DESIGN §2), so
its MAC counts rest on the right channel widths; and the step factor is applied as documented."""
import pytest

from bench import flops
from bench.paper import BATCH_1GPU, block_channels, nf

# (G, D) millions of parameters at each stage, fmap_base=2048 (DESIGN §2)
PAPER_PARAMS = {2: (6.56, 6.55), 3: (11.2, 11.2), 4: (13.05, 13.04), 5: (13.49, 13.48), 6: (13.59, 13.60),
                7: (13.62, 13.62)}


@pytest.mark.parametrize("r", sorted(PAPER_PARAMS))
def test_parameter_counts_match_the_paper(r):
    g = flops.params(flops.generator_layers(r, fmap_base=2048)) / 1e6
    d = flops.params(flops.discriminator_layers(r, fmap_base=2048)) / 1e6
    assert g == pytest.approx(PAPER_PARAMS[r][0], rel=0.01)
    assert d == pytest.approx(PAPER_PARAMS[r][1], rel=0.01)


def test_channels_and_schedule():
    assert [block_channels(2 ** r) for r in range(2, 11)] == [512, 512, 512, 512, 256, 128, 64, 32, 16]
    assert nf(0) == 512 and BATCH_1GPU[1024] == 4


def test_macs_by_hand_and_step_factor():
    g4 = flops.generator_layers(2)
    assert flops.macs(g4) == 512 * 512 * 16 + 16 * 9 * 512 * 512 + 16 * 512 * 3
    # fused resampling does 4/9 of an unfused up-conv's MACs (and 16/36 of a down-conv's)
    up = {l.name: l.macs for l in flops.generator_layers(3)}["G8.conv0_up"]
    up_f = {l.name: l.macs for l in flops.generator_layers(3, fused_scale=True)}["G8.conv0_up"]
    assert up_f * 9 == up * 4
    fg, fd = flops.forward_flops(5)
    assert flops.train_step_flops(5) == 4 * fg + 14 * fd
    # fading adds the old toRGB / fromRGB paths
    assert flops.forward_flops(5, fading=True)[0] > fg


def test_counts_match_the_models_when_present():
    models = pytest.importorskip("progan_fast.models")
    for r in (2, 4):
        G = models.Generator(2 ** r, fmap_base=2048)
        D = models.Discriminator(2 ** r, fmap_base=2048)
        n_g = sum(p.numel() for p in G.parameters())
        n_d = sum(p.numel() for p in D.parameters())
        # the models also hold the lower resolutions' toRGB / fromRGB (a few thousand weights)
        assert n_g == pytest.approx(flops.params(flops.generator_layers(r, fmap_base=2048)), rel=0.005)
        assert n_d == pytest.approx(flops.params(flops.discriminator_layers(r, fmap_base=2048)), rel=0.005)
