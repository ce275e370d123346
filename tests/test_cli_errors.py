"""What users can get wrong on the command line: one line naming the file, exit code 2."""

from __future__ import annotations

import json

import pytest

from napari_imedsam.cli import app as cli
from napari_imedsam.cli.app import _attach_negative_boxes, main


def _write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("content, expected", [
    ("[1, 2]", "is not a napari-imedsam export record"),
    ("{not json", "is not a JSON file"),
    (json.dumps({"format": "napari-imedsam-export"}), "lacks image, model, scale, objects"),
    (json.dumps({"format": "napari-imedsam-export", "image": [1], "model": {}, "scale": 1,
                 "objects": []}), "lacks image.shape"),
])
def test_damaged_export_records_get_one_line(tmp_path, capsys, content, expected):
    from napari_imedsam.export import FORMAT

    content = content.replace("napari-imedsam-export", FORMAT)
    record = _write(tmp_path / "r.json", content)
    assert main(["segment", "--from-export", record, "--out", str(tmp_path / "o.tif")]) == 2
    err = capsys.readouterr().err
    assert expected in err and "r.json" in err and "Traceback" not in err
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.parametrize("argv, expected", [
    (["train", "--synthetic", "4", "--batch-size", "0", "--out", "x.safetensors"],
     "--batch-size: must be at least 1"),
    (["train", "--synthetic", "4", "--epochs", "-3", "--out", "x.safetensors"],
     "--epochs: must be at least 1"),
    (["evaluate", "--data", ".", "--label-size", "0"], "--label-size: must be at least 1"),
])
def test_impossible_numbers_are_refused_by_the_parser(capsys, argv, expected):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and expected in capsys.readouterr().err


def test_a_boxes_file_without_its_columns_names_itself(tmp_path, capsys):
    boxes = _write(tmp_path / "b.csv", "image,x0\na.png,1\n")
    assert main(["segment", "--batch", str(tmp_path), "--boxes-file", boxes, "--out-dir",
                 str(tmp_path / "out"), "--model", "tiny"]) == 2
    assert "b.csv: each row needs image,x0,y0,x1,y1" in capsys.readouterr().err


def test_negative_box_numbers_parse():
    assert _attach_negative_boxes(["segment", "a.png", "--box", "-50,-2,5,5", "--out", "o"]) == [
        "segment", "a.png", "--box=-50,-2,5,5", "--out", "o"]
    assert _attach_negative_boxes(["--box", "1,2,3,4"]) == ["--box", "1,2,3,4"]


def test_ctrl_c_says_how_to_resume(monkeypatch, capsys):
    def interrupted(args):  # noqa: ANN001
        raise KeyboardInterrupt

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["train"].set_defaults(func=interrupted)
    assert main(["train", "--synthetic", "4", "--out", "x.safetensors"]) == 130
    assert "--resume" in capsys.readouterr().err


def test_outputs_that_would_lie_are_refused_before_any_work(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "a.png")
    image, box = str(tmp_path / "a.png"), "5,5,20,20"
    cases = [
        (["--out", str(tmp_path / "m.png")], "name the file .tif"),
        (["--out", str(tmp_path / "m.tif"), "--uncertainty", str(tmp_path / "u.jpg")],
         "name the file .tif"),
        (["--out", str(tmp_path / "m.tif"), "--slice", "3"], "--slice applies to volumes"),
        (["--out", str(tmp_path / "m.tif"), "--window", "inf,40"], "finite positive width"),
    ]
    for extra, expected in cases:
        assert main(["segment", image, "--box", box, "--model", "tiny", *extra]) == 2
        assert expected in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_a_batch_with_a_bad_window_stops_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(b"")
    boxes = _write(tmp_path / "b.csv", "image,x0,y0,x1,y1\na.png,1,1,5,5\n")
    # "tiny" is no weights name: reaching the model would say so instead.
    assert main(["segment", "--batch", str(tmp_path), "--boxes-file", boxes, "--out-dir",
                 str(tmp_path / "out"), "--window", "nan,40", "--model", "tiny"]) == 2
    assert "finite positive width" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_evaluate_with_no_objects_fails_instead_of_reporting_nothing(tmp_path, capsys):
    """Empty masks gave exit 0 and a report of null numbers; now one line and no files."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(root / "images" / f"e{i}.png")
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "masks" / f"e{i}.png")
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--data", str(root), "--model", "medsam_lite", "--label-size", "32",
                 "--json", str(report), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "no labelled objects to evaluate in" in err and str(root) in err
    assert not report.exists() and not report.with_suffix(".csv").exists()
