"""Style images: local path, search folder, verified download (file:// URLs stand in for the web)."""

import hashlib
from pathlib import Path

import pytest

from fastnst.training.style import StyleImageError, load_style_image, resolve_style_image


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTNST_STYLE_DIR", raising=False)
    return tmp_path / "cache" / "fastnst" / "styles"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_local_image_wins(style_file: Path, cache: Path) -> None:
    assert resolve_style_image(str(style_file), "https://example.invalid/x.png", "0" * 64) == style_file


def test_download_verified_then_cached(style_file: Path, cache: Path) -> None:
    url = style_file.as_uri()
    got = resolve_style_image(None, url, sha(style_file))
    assert got == cache / style_file.name and got.read_bytes() == style_file.read_bytes()
    assert resolve_style_image(None, "https://offline.invalid/" + style_file.name, sha(style_file)) == got  # cache hit, no network


def test_bad_checksum_never_lands_in_cache(style_file: Path, cache: Path) -> None:
    with pytest.raises(StyleImageError, match="expected 0000"):
        resolve_style_image(None, style_file.as_uri(), "0" * 64)
    assert not (cache / style_file.name).exists()
    assert not list(cache.glob("*.part"))


def test_offline_error_says_where_to_put_the_file(cache: Path) -> None:
    with pytest.raises(StyleImageError, match=r"starry_night\.jpg is not available offline .* put starry_night\.jpg into .*style\.image="):
        resolve_style_image(None, "http://127.0.0.1:9/starry_night.jpg", "0" * 64)


def test_search_folder_checked_against_sha(style_file: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTNST_STYLE_DIR", str(style_file.parent))
    assert resolve_style_image(None, "https://offline.invalid/stripes.png", sha(style_file)) == style_file
    with pytest.raises(StyleImageError, match="does not match the expected SHA-256"):
        resolve_style_image(None, "https://offline.invalid/stripes.png", "1" * 64)


def test_load_resizes_long_side(style_file: Path) -> None:
    img = load_style_image(style_file, 48)
    assert img.shape == (3, 32, 48) and 0 <= img.min() and img.max() <= 1
    assert load_style_image(style_file, None).shape == (3, 64, 96)
