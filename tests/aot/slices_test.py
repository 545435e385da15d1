"""golfjax/aot/slices.py: slice names, shapes and hosts (no libtpu needed)."""

import pytest

from golfjax.aot import slices


@pytest.mark.parametrize("name, topology, chips, hosts", [
    ("v5p-8", "v5p:2x2x1", 4, 1),
    ("v5p-32", "v5p:2x2x4", 16, 4),
    ("v5p-64", "v5p:2x4x4", 32, 8),
    ("v5p-128", "v5p:4x4x4", 64, 16),
    ("v5p-1024", "v5p:8x8x8", 512, 128),
    ("v5e-16", "v5e:4x4", 16, 4),
    ("v5litepod-16", "v5e:4x4", 16, 4),
    ("v5e-256", "v5e:16x16", 256, 64),
    ("v6e-8", "v6e:2x4", 8, 1),
    ("v4-32", "v4:2x2x4", 16, 4),
    ("v5p:4x4x12", "v5p:4x4x12", 192, 48),
])
def test_names_give_the_cloud_topologies(name, topology, chips, hosts):
    tpu = slices.parse(name)
    assert (tpu.topology, tpu.chips, tpu.hosts) == (topology, chips, hosts)


def test_multislice_multiplies_chips_and_hosts():
    tpu = slices.parse("v5p-32", num_slices=2)
    assert (tpu.chips, tpu.hosts, tpu.topology) == (32, 8, "v5p:2x2x4")
    assert "x 2 slices" in tpu.describe()


def test_chip_figures_are_the_public_ones():
    v5p = slices.CHIPS["v5p"]
    assert (v5p.hbm_bytes, v5p.peak_flops, v5p.hbm_bytes_per_s) == (95 * 2**30, 459e12, 2.765e12)
    assert slices.parse("v5litepod-16").chip is slices.CHIPS["v5e"]


@pytest.mark.parametrize("name, message", [
    ("v5p-48", r"--topology='v5p-48': 24 chips; name its shape instead"),
    ("v5p-7", r"--topology='v5p-7': v5p sizes count TensorCores"),
    ("tpu-8", r"--topology='tpu-8': expected GENERATION-SIZE"),
    ("v5e:2x2x2", r"--topology='v5e:2x2x2': v5e topologies have 2 dimensions"),
    ("v5p:2x3x3", r"--topology='v5p:2x3x3': 18 chips do not fill hosts of 4"),
])
def test_bad_names_are_one_line_errors(name, message):
    with pytest.raises(ValueError, match=message):
        slices.parse(name)
    with pytest.raises(ValueError, match="--num_slices=0"):
        slices.parse("v5p-8", num_slices=0)
