"""The e2e image builder's suite handling (e2e/image.py), without building anything: keys, apt sources,
and which cached trees a new build replaces. The builds themselves run in tests/test_e2e_scenarios.py."""

from __future__ import annotations

import pytest

from e2e import image


def test_every_suite_has_its_own_base_key():
    keys = {suite: image.base_key(suite) for suite in image.SUITES}
    assert set(image.SUITES) == {"bookworm", "trixie"}
    assert len(set(keys.values())) == len(image.SUITES)
    assert image.base_key() == keys[image.DEFAULT_SUITE] == keys["bookworm"]


def test_unknown_suite_is_refused_with_the_allowed_ones():
    with pytest.raises(ValueError, match=r"suite must be one of bookworm, trixie, got 'sid'"):
        image.base_key("sid")
    with pytest.raises(ValueError, match="suite must be one of"):
        image.build_image(image.DEBIAN, suite="buster")


def test_trixie_sources_rename_every_bookworm_suite(tmp_path, monkeypatch):
    sources = tmp_path / "debian.sources"
    sources.write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n"
    )
    monkeypatch.setattr(image, "APT_SOURCES", sources)
    assert image.apt_sources("bookworm") == sources.read_bytes()
    trixie = image.apt_sources("trixie").decode()
    assert "Suites: trixie trixie-updates\n" in trixie and "Suites: trixie-security\n" in trixie
    assert "bookworm" not in trixie
    monkeypatch.setattr(image, "APT_SOURCES", tmp_path / "missing.sources")
    assert image.apt_sources("trixie") is None  # mmdebstrap's default mirror then


def test_a_new_base_replaces_only_the_same_suites_old_trees(tmp_path, monkeypatch):
    """build_base's clean-up: older keys of the suite go, the other suite's tree stays (a tree from before
    the suite file counts as bookworm)."""
    monkeypatch.setattr(image, "CACHE", tmp_path)
    old_bookworm, legacy, trixie = (tmp_path / n for n in ("base-old1", "base-legacy", "base-tri"))
    for d, suite in ((old_bookworm, "bookworm"), (legacy, None), (trixie, "trixie")):
        d.mkdir()
        (d / "done").write_text("1\n")
        if suite:
            (d / "suite").write_text(suite + "\n")
    new_bookworm = tmp_path / "base-new"
    new_bookworm.mkdir()
    building = tmp_path / "base-new2.tmp"  # another build still under way (no done file)
    building.mkdir()
    image.drop_old_bases("bookworm", keep=new_bookworm)
    assert sorted(d.name for d in tmp_path.iterdir()) == ["base-new", "base-new2.tmp", "base-tri"]
    image.drop_old_bases("trixie", keep=tmp_path / "base-tri2")
    assert sorted(d.name for d in tmp_path.iterdir()) == ["base-new", "base-new2.tmp"]
