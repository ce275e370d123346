"""First use of a SAM model in the Segment widget: the weights download with napari
progress, a Cancel, and offline advice; against a server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.utils.progress import progress  # noqa: E402

from napari_imedsam import download as _download  # noqa: E402
from napari_imedsam.model import weights as w  # noqa: E402

PAYLOAD = np.random.default_rng(0).bytes(300_000)  # a fake vit_b checkpoint
FILENAME = "sam_vit_b_01ec64.pth"


class SlowServer:
    """Serves PAYLOAD in 4 KB pieces, ``delay`` seconds apart."""

    def __init__(self, delay: float = 0.0) -> None:
        server = self
        self.delay = delay

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                try:
                    for i in range(0, len(PAYLOAD), 4096):
                        self.wfile.write(PAYLOAD[i:i + 4096])
                        time.sleep(server.delay)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client cancelled

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_vit_b(tmp_path, monkeypatch, private_qsettings):
    """vit_b in the registry points at a local server; loading it records the call."""
    server = SlowServer()
    entry = w.WeightsEntry("vit_b", "vit_b", FILENAME, f"{server.base}/{FILENAME}",
                           len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest())
    monkeypatch.setitem(w.REGISTRY, "vit_b", entry)
    monkeypatch.setenv(w.ENV_CACHE_DIR, str(tmp_path / "cache"))
    monkeypatch.delenv(w.ENV_WEIGHTS_DIR, raising=False)
    monkeypatch.delenv(w.ENV_WEIGHTS_URL, raising=False)
    monkeypatch.setattr(w, "_CHUNK", 4096)
    loads: list[str] = []

    def load_model(name, adapter=None, **kwargs):  # noqa: ANN001, ANN003, ANN202
        from napari_imedsam.model import build_model

        assert (tmp_path / "cache" / FILENAME).read_bytes() == PAYLOAD  # downloaded first
        loads.append(str(name))
        return build_model("tiny")

    import napari_imedsam.model.loading as loading

    monkeypatch.setattr(loading, "load_model", load_model)
    yield server, loads
    server.stop()


def _widget_with_box(make_napari_viewer):  # noqa: ANN001, ANN202
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(1).integers(0, 255, (64, 64)).astype(np.uint8))
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    widget.model_combo.setCurrentText("vit_b")
    bars: list = []
    progress._all_instances.events.changed.connect(lambda e: bars.extend(e.added))
    widget.boxes.add_rectangles(np.array([[10, 10], [10, 40], [40, 40], [40, 10]], float))
    return viewer, widget, bars


def test_download_shows_progress_then_segments(make_napari_viewer, qtbot, fake_vit_b, notes,
                                               tmp_path):
    _, loads = fake_vit_b
    viewer, widget, bars = _widget_with_box(make_napari_viewer)
    assert widget.downloads.running and widget.busy and widget.downloads.isVisibleTo(widget)
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert loads == ["vit_b"]  # the model loaded once, after the download
    seen = widget.downloads.progress_seen
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD)) and len(seen) > 1
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    [bar] = [b for b in bars if "sam_vit_b_01ec64.pth (0 MB)" in b.desc]
    assert bar.total == len(PAYLOAD) // 1000 and bar.n == len(PAYLOAD) // 1000
    assert not widget.downloads.isVisibleTo(widget)
    assert any("weights saved to" in m for _, m in notes), notes
    # The next box needs no download.
    widget.boxes.add_rectangles(np.array([[5, 5], [5, 20], [20, 20], [20, 5]], float))
    assert not widget.downloads.running
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert not [m for s, m in notes if s == "error"], notes


def test_cancel_keeps_nothing_and_says_where_the_file_goes(make_napari_viewer, qtbot,
                                                           fake_vit_b, notes, tmp_path):
    server, loads = fake_vit_b
    server.delay = 0.02  # about 1.5 s in all: time to press Cancel
    viewer, widget, _ = _widget_with_box(make_napari_viewer)
    qtbot.waitUntil(lambda: bool(widget.downloads.progress_seen), timeout=30_000)
    widget.downloads.cancel_button.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)
    assert loads == [] and widget.masks.data.max() == 0
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(cache.iterdir())  # no partial file
    [message] = [m for _, m in notes if "cancelled" in m]
    assert FILENAME in message and w.ENV_WEIGHTS_DIR in message and str(cache) in message
    assert "cancelled" in widget.status.text()


def test_offline_error_says_which_file_to_put_where(make_napari_viewer, qtbot, fake_vit_b, notes,
                                                    tmp_path):
    server, loads = fake_vit_b
    server.stop()  # nothing listens any more: like a machine without network
    viewer, widget, _ = _widget_with_box(make_napari_viewer)
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    errors = [m for s, m in notes if s == "error"]
    assert len(errors) == 1, notes
    assert FILENAME in errors[0] and w.ENV_WEIGHTS_DIR in errors[0]
    assert "Traceback" not in errors[0] and loads == []
    # Once the file is where the message says, the same box works.
    weights_dir = tmp_path / "offline"
    weights_dir.mkdir()
    (weights_dir / FILENAME).write_bytes(PAYLOAD)
    assert _download.registry_name(widget.settings.spec(), widget._holder) == "vit_b"
    import os

    os.environ[w.ENV_WEIGHTS_DIR] = str(weights_dir)
    try:
        assert _download.registry_name(widget.settings.spec(), widget._holder) is None
    finally:
        del os.environ[w.ENV_WEIGHTS_DIR]
