"""Block-family plugins declared in the ``xvol.families`` entry point group: one broken plugin is reported (a warning
naming the entry point, its distribution and the error, kept for ``broken_plugins()``) and the others still load."""

from __future__ import annotations

import importlib.metadata
import sys
import warnings

import pytest
import torch

from xvol_export.fold import family as registry
from xvol_export.fold import fold
from xvol_export.testing import check_family, randomize_batchnorm

BUILT_IN = ["xvolution", "repvgg", "acb", "dbb", "mobileone", "dilated_reparam"]
GOOD, BROKEN = "family_plugin_good", "family_plugin_broken"  # modules next to this file
BROKEN_ERROR = f"ImportError: {BROKEN} needs a package that is not installed"


def _distribution(root, name: str, version: str, entry_point: str) -> importlib.metadata.Distribution:
    """An installed distribution (a dist-info folder under ``root``) declaring one ``xvol.families`` entry point."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\n{entry_point}\n")
    return importlib.metadata.PathDistribution(info)


@pytest.fixture
def plugins(monkeypatch, tmp_path):
    """The registry before its first lookup (built-in families only, no entry point read yet), with the group
    holding a broken plugin, then a good one (the order in which the broken one hid every later plugin)."""
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    monkeypatch.setattr(registry, "_BROKEN", [])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    for module in (GOOD, BROKEN):
        monkeypatch.delitem(sys.modules, module, raising=False)
    broken = _distribution(tmp_path, "xvol-broken-plugin", "0.3", f"broken = {BROKEN}")
    good = _distribution(tmp_path, "xvol-good-plugin", "1.2", f"two_branch = {GOOD}")
    points = [point for dist in (broken, good) for point in dist.entry_points.select(group=registry.ENTRY_POINT_GROUP)]
    assert [type(p) for p in points] == [importlib.metadata.EntryPoint] * 2

    def entry_points(**selection):
        return [p for p in points if all(getattr(p, key) == value for key, value in selection.items())]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    yield points
    sys.modules.pop(GOOD, None)  # its family was registered into the fixture's copy of the registry only


def test_a_broken_plugin_is_reported_and_the_others_still_load(plugins):
    with pytest.warns(RuntimeWarning) as caught:
        names = [family.name for family in registry.families()]
    assert names == [*BUILT_IN, "plugin_two_branch"]
    message = str(caught[0].message)
    assert f"broken = {BROKEN}" in message and "xvol-broken-plugin 0.3" in message and BROKEN_ERROR in message
    assert registry.broken_plugins() == [
        registry.BrokenPlugin(f"broken = {BROKEN}", "xvol-broken-plugin 0.3", BROKEN_ERROR)]
    with pytest.raises(KeyError, match=f"failed to load: broken = {BROKEN} \\(from xvol-broken-plugin 0.3\\)"):
        registry.get_family("broken")

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once, not at every lookup
        good = registry.get_family("plugin_two_branch")
    assert check_family(good)
    plugin = sys.modules[GOOD]
    model = randomize_batchnorm(torch.nn.Sequential(plugin.PluginTwoBranch(), torch.nn.ReLU()), seed=1).eval()
    deploy, report = fold(model)
    x = torch.randn(1, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert [b.family for b in report.blocks] == ["plugin_two_branch"]
        assert torch.allclose(deploy(x), model(x), rtol=1e-5, atol=1e-6)


def test_doctor_names_the_broken_plugin(plugins):
    from xvol_export.doctor import machine_report

    with pytest.warns(RuntimeWarning):
        report = machine_report()
    assert report["broken_plugins"] == [f"broken = {BROKEN} (from xvol-broken-plugin 0.3): {BROKEN_ERROR}"]


def test_without_plugins_nothing_is_broken(monkeypatch):
    monkeypatch.setattr(registry, "_BROKEN", [])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **selection: [])
    assert registry.broken_plugins() == [] and [f.name for f in registry.families()][:len(BUILT_IN)] == BUILT_IN
