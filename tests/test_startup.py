"""Fast start: the commands that do little work import no heavy library (torch, torchvision, scikit-learn,
pandas, matplotlib), and a process that finds the glyphs renders cached neither scans the fonts nor imports
torch. Nothing here is timed (benchmarks/startup.py prints the seconds); the tests check what gets imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ncbench.data import glyphs

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "sklearn", "pandas", "matplotlib", "scipy")


def heavy_imports(code: str, cwd: Path, **env: str) -> list[str]:
    """The heavy top-level packages imported by a fresh interpreter running ``code`` (which may print first)."""
    probe = (f"{code}\nimport sys\n"
             f"print('HEAVY=' + ','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY=")][-1]
    return [m for m in line.removeprefix("HEAVY=").split(",") if m]


def test_importing_the_cli_imports_no_torch(tmp_path):
    assert heavy_imports("import ncbench.cli", tmp_path) == []


@pytest.mark.parametrize("argv", [["list", "datasets"], ["list", "tasks"]])
def test_light_commands_import_no_heavy_library(argv, tmp_path):
    code = f"from ncbench.cli import main\nassert main({argv!r}) == 0"
    assert heavy_imports(code, tmp_path) == []


def test_help_imports_no_heavy_library(tmp_path):
    code = ("from ncbench.cli import COMMANDS, main\n"
            "for argv in [['--help'], *([name, '--help'] for name in COMMANDS)]:\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert not e.code, argv\n")
    assert heavy_imports(code, tmp_path) == []


@pytest.mark.parametrize("argv", [["validate", "--no-data", str(ROOT / "tasks" / "glyphs-smoke.yaml")],
                                  ["list", "backbones"], ["list", "heads"], ["list", "metrics"]])
def test_name_checks_import_torch_only_to_fill_the_catalogue(argv, tmp_path):
    """validate and list check names against the backbone, head and metric registries, whose modules import
    torch: the first process fills the catalogue cache (importing them), later ones read it and import nothing
    heavy, with the same output."""
    code = f"from ncbench.cli import main\nassert main({argv!r}) == 0"
    cache = str(tmp_path / "cache")
    assert "torch" in heavy_imports(code, tmp_path, NCBENCH_CACHE=cache)
    assert heavy_imports(code, tmp_path, NCBENCH_CACHE=cache) == []


def test_the_catalogue_is_what_the_registries_hold(tmp_path):
    from ncbench import registry
    from ncbench.heads import head_options

    built = registry.build_catalogue()
    assert built["backbone"] == {n: [] for n in registry.BACKBONES.names()} and "conv4" in built["backbone"]
    assert built["metric"] == {n: [] for n in registry.METRICS.names()} and "cdnv" in built["metric"]
    assert built["head"] == {n: list(head_options(n)) for n in registry.HEADS.names()}
    assert built["head"]["ridge"] == ["alpha"]
    registry.catalogue.cache_clear()
    try:
        assert registry.catalogue(str(tmp_path)) == built  # built and written
        path = registry.catalogue_path(tmp_path)
        assert json.loads(path.read_text()) == built
        path.write_text('{"head": {"ridge": "not a list"}}')  # malformed: rebuilt and rewritten
        registry.catalogue.cache_clear()
        assert registry.catalogue(str(tmp_path)) == built and json.loads(path.read_text()) == built
    finally:
        registry.catalogue.cache_clear()


def test_the_catalogue_key_follows_the_sources(tmp_path):
    from ncbench.registry import source_key

    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    (pkg / "notes.txt").write_text("not source")
    first = source_key(pkg)
    assert source_key(pkg) == first
    (pkg / "notes.txt").write_text("changed, still not source")
    assert source_key(pkg) == first
    (pkg / "sub" / "b.py").write_text("y = 3\n")  # an edited module: a new catalogue
    edited = source_key(pkg)
    assert edited != first
    (pkg / "c.py").write_text("")  # a new module: a new catalogue
    assert source_key(pkg) not in (first, edited)


def test_a_head_registered_at_run_time_is_known_to_the_name_checks(monkeypatch):
    from ncbench.registry import HEADS, head_option_names

    monkeypatch.setattr(HEADS, "_entries", dict(HEADS._entries))
    monkeypatch.setattr(HEADS, "_populated", False)  # as in a process that has not imported ncbench.heads

    class Plain:
        def __init__(self, depth: int = 2):
            pass

    HEADS.register("plain-test-head", Plain)
    assert "plain-test-head" in HEADS and "plain-test-head" in HEADS.names() and "ridge" in HEADS
    assert head_option_names("plain-test-head") == ["depth"] and head_option_names("ridge") == ["alpha"]
    assert "did you mean 'plain-test-head'" in HEADS.unknown_message("plain-test-hed")


# ------------------------------------------------------------------------------------ glyphs font scan
def test_font_scan_is_cached_on_disk(tmp_path, monkeypatch):
    scanned = []

    def fake_scan():
        scanned.append(1)
        return [65, 66, 0x3B1], {}

    monkeypatch.setattr(glyphs, "_glyph_table", fake_scan)
    glyphs._usable.cache_clear()
    assert glyphs.usable_characters(tmp_path) == [65, 66, 0x3B1]
    path = glyphs.scan_cache_path(tmp_path)
    assert path.parent == tmp_path / "glyphs" and json.loads(path.read_text()) == {"codepoints": [65, 66, 0x3B1]}
    glyphs._usable.cache_clear()  # a new process: reads the file, does not scan
    assert glyphs.usable_characters(tmp_path) == [65, 66, 0x3B1] and scanned == [1]

    path.write_text('{"codepoints": [66, 65]}')  # not ascending: scanned again and rewritten
    glyphs._usable.cache_clear()
    assert glyphs.usable_characters(tmp_path) == [65, 66, 0x3B1] and scanned == [1, 1]
    path.write_text("{trunc")
    glyphs._usable.cache_clear()
    assert glyphs.usable_characters(tmp_path) == [65, 66, 0x3B1] and scanned == [1, 1, 1]
    glyphs._usable.cache_clear()


def test_font_scan_key_follows_the_font_files(tmp_path, monkeypatch):
    fonts = tmp_path / "fonts"
    fonts.mkdir()
    for name in glyphs.FONT_FILES:
        (fonts / name).write_bytes(b"font " + name.encode())
    monkeypatch.setattr(glyphs, "font_dir", lambda: fonts)
    first = glyphs.scan_cache_path(tmp_path)
    assert glyphs.scan_cache_path(tmp_path) == first  # stable
    st = (fonts / glyphs.FONT_FILES[3]).stat()
    os.utime(fonts / glyphs.FONT_FILES[3], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = glyphs.scan_cache_path(tmp_path)
    assert touched != first
    (fonts / glyphs.FONT_FILES[0]).write_bytes(b"a longer font file")
    assert glyphs.scan_cache_path(tmp_path) not in (first, touched)
    monkeypatch.setattr(glyphs.importlib.metadata, "version", lambda name: "0.0-other")
    assert glyphs.scan_cache_path(tmp_path) not in (first, touched)
    (fonts / glyphs.FONT_FILES[5]).unlink()
    with pytest.raises(glyphs.DatasetError, match=glyphs.FONT_FILES[5]):
        glyphs.scan_cache_path(tmp_path)


def test_cached_glyphs_load_without_scan_torch_or_matplotlib(tmp_path, monkeypatch):
    """A process whose renders and font scan are cached (a sandboxed unit, `ncbench validate`) loads the
    dataset with numpy alone."""
    path = glyphs.scan_cache_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"codepoints": [65, 66, 67]}))
    images = (np.arange(3 * 4 * 8 * 8) % 251).astype(np.uint8).reshape(3, 4, 8, 8)
    monkeypatch.setattr(glyphs, "render", lambda cps, n, seed, size: images)  # this process fills the cache
    glyphs._usable.cache_clear()
    first = glyphs.load(per_class=4, image_size=8, cache_dir=tmp_path)
    glyphs._usable.cache_clear()
    assert np.array_equal(first.images[..., 0], images.reshape(12, 8, 8))
    code = (f"import numpy as np\nfrom ncbench.data import glyphs\n"
            f"glyphs._glyph_table = glyphs.render = None  # a scan or a render would fail\n"
            f"ds = glyphs.load(per_class=4, image_size=8, cache_dir={str(tmp_path)!r})\n"
            f"assert ds.class_names == ['A', 'B', 'C'], ds.class_names\n"
            f"assert np.array_equal(ds.labels, np.repeat([0, 1, 2], 4)), ds.labels\n"
            f"assert np.array_equal(ds.images[..., 0], np.arange(12 * 64).reshape(12, 8, 8) % 251)\n")
    assert heavy_imports(code, tmp_path) == []
