import pytest

from progan_fast.training.schedule import Schedule


def test_official_lod_formula():
    s = Schedule(resolution=32)  # log2 = 5; starts at lod 3 (4 px)
    assert s.at(0).lod == 3 and s.at(0).resolution == 4 and s.at(0).alpha == 1.0
    assert s.at(599.9).resolution == 4
    p = s.at(600 + 150)  # a quarter into the fade to 8 px
    assert p.lod == pytest.approx(2.75) and p.resolution == 8 and p.alpha == pytest.approx(0.25)
    assert s.at(1200).lod == 2 and s.at(1200).resolution == 8 and s.at(1200).alpha == 1.0
    assert s.at(3 * 1200).lod == 0 and s.at(99999).lod == 0 and s.at(99999).resolution == 32
    assert s.total_kimg_to_full() == 3600


def test_resolution_switches_as_soon_as_a_fade_starts():
    s = Schedule(resolution=16, stable_kimg=10, fade_kimg=10)
    assert s.at(10.0).resolution == 4
    assert s.at(10.001).resolution == 8


def test_minibatch_and_lr_dicts():
    s = Schedule(resolution=1024)
    assert s.at(0).minibatch == 128
    assert s.at(99999).minibatch == 4 and s.at(99999).lrate == 0.0015
    s8 = Schedule(resolution=32, minibatch={4: 30}, world_size=4)
    assert s8.at(0).minibatch == 28  # rounded down to a multiple of the world size


def test_lod_bounds_change_at_phase_edges():
    s = Schedule(resolution=16, stable_kimg=10, fade_kimg=10)
    assert s.at(5).lod_bounds == (2, 2)
    assert s.at(15).lod_bounds == (1, 2)
    assert s.at(25).lod_bounds == (1, 1)


def test_per_gpu_cap():
    s = Schedule(resolution=256, minibatch={256: 64}, world_size=2, max_minibatch_per_gpu={256: 16})
    assert s.at(99999).minibatch == 32
    assert Schedule(resolution=256, minibatch={256: 64}, world_size=8, max_minibatch_per_gpu={256: 16}).at(99999).minibatch == 64
