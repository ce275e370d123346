"""Corrective clicks: where the protocol puts them, the curve's numbers, the command line."""

from __future__ import annotations

import numpy as np
import pytest

from napari_imedsam.train.clicks import (
    Click, click_curve_summary, error_regions, protocol_click, random_click,
)


def test_the_protocol_clicks_the_centre_of_the_largest_error_region_with_its_sign():
    target = np.zeros((40, 40), bool)
    target[5:25, 5:25] = True  # the object
    pred = np.zeros_like(target)
    pred[5:25, 5:15] = True  # half of it found: a 20 x 10 miss on the right
    pred[30:34, 30:34] = True  # and a small false region
    click = protocol_click(pred, target)
    assert click == Click(14, 19, True) or (click.positive and 14 <= click.row <= 15
                                            and 19 <= click.col <= 20)
    # The largest region is now the false one: a negative click at its centre.
    pred = target.copy()
    pred[26:38, 26:38] = True
    click = protocol_click(pred, target)
    assert not click.positive and 31 <= click.row <= 32 and 31 <= click.col <= 32
    assert protocol_click(target, target) is None
    regions = error_regions(pred, target)
    assert len(regions) == 1 and regions[0][0].sum() == 144 and regions[0][1] is False


def test_random_clicks_fall_inside_error_regions_and_keep_their_sign():
    target = np.zeros((30, 30), bool)
    target[2:20, 2:20] = True
    pred = np.zeros_like(target)
    pred[2:20, 2:10] = True
    rng = np.random.default_rng(0)
    for _ in range(50):
        click = random_click(pred, target, rng)
        assert click.positive and target[click.row, click.col] and not pred[click.row, click.col]
    assert click.xy((30, 30), (60, 90)) == ((click.col + 0.5) * 3, (click.row + 0.5) * 2)


def test_the_click_curve_gives_the_challenge_numbers():
    curves = np.array([[0.8, 0.9, 0.95], [0.6, 0.5, 0.7]])
    got = click_curve_summary(curves)
    assert got["dice_by_clicks"] == pytest.approx([0.7, 0.7, 0.825])
    assert got["dsc_auc"] == pytest.approx((0.7 + 0.7) / 2 + (0.7 + 0.825) / 2)
    assert got["worse_click_share"] == pytest.approx(0.25)  # 1 of the 4 clicks lowered Dice
    # Clicks not made (the mask was exact) are not counted.
    made = np.array([[True, False], [True, True]])
    assert click_curve_summary(curves, made)["worse_click_share"] == pytest.approx(1 / 3)


def test_points_on_the_command_line_attach_to_the_box_before_them():
    from napari_imedsam.cli.app import build_parser
    from napari_imedsam.cli.infer import objects_from_prompts

    args = build_parser().parse_args(
        ["segment", "x.png", "--point", "5,6", "--box", "1,2,30,40", "--point", "10,11,-",
         "--point", "12,13,+", "--box", "50,50,60,60", "--out", "m.tif"])
    boxes, clicks = objects_from_prompts(args.prompts)
    assert np.isnan(boxes[0]).all() and clicks[0].xy.tolist() == [[5.0, 6.0]]
    assert boxes[1] == [1.0, 2.0, 30.0, 40.0] and clicks[1].labels.tolist() == [0, 1]
    assert clicks[1].xy.tolist() == [[10.0, 11.0], [12.0, 13.0]] and clicks[2] is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["segment", "x.png", "--point", "5,6,?"])


def test_evaluate_with_clicks_reports_the_curve(tmp_path):
    import torch

    from napari_imedsam.model import build_model
    from napari_imedsam.train.data import LabeledImage
    from napari_imedsam.train.evaluate import evaluate_model, summary

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    labels = np.zeros((48, 48), np.int32)
    labels[10:30, 12:36] = 1
    image = np.repeat((labels * 120 + 40).astype(np.uint8)[..., None], 3, axis=2)
    rows = evaluate_model(model, [LabeledImage("a", image, labels)], label_size=32,
                          decoder="sam", clicks=3, with_distances=False, accelerate=False)
    assert [k for k in rows[0] if k.startswith("dice_c")] == [f"dice_c{i}" for i in range(4)]
    assert rows[0]["dice"] == rows[0]["dice_c3"] and 0 <= rows[0]["clicks_made"] <= 3
    report = summary(rows)
    assert len(report["dice_by_clicks"]) == 4 and "dsc_auc" in report
    assert 0.0 <= report["worse_click_share"] <= 1.0


def test_click_adapters_answer_clicks_only_and_a_box_alone_stays_the_backbones():
    """LoRA in the mask decoder (the click adapters) changes answers with clicks, never
    a box alone: its answer stays exactly the backbone's, on both decoders."""
    from dataclasses import replace

    import torch

    from napari_imedsam.model import build_model
    from napari_imedsam.model.config import get_config
    from napari_imedsam.model.modeling.lora import LoRALinear
    from napari_imedsam.train.click_tuning import click_path_parameters

    torch.manual_seed(0)
    base_cfg = get_config("tiny")
    model = build_model(config=replace(base_cfg, prompt=replace(base_cfg.prompt,
                                                                click_lora_rank=4))).eval()
    plain = build_model(config=base_cfg).eval()
    plain.load_state_dict({(k.replace(".base.", ".") if k.startswith("mask_decoder.") else k): v
                           for k, v in model.state_dict().items()
                           if not (k.startswith("mask_decoder.") and ".lora_" in k)})
    layers = [m for m in model.mask_decoder.transformer.modules() if isinstance(m, LoRALinear)]
    assert layers and all(not m.lora_B.any() for m in layers)
    for m in layers:
        torch.nn.init.normal_(m.lora_B, std=0.5)  # as if trained
    trained = {id(p) for p in click_path_parameters(model)}
    assert id(model.prompt_encoder.point_embeddings[2].weight) not in trained  # box corners
    grid = model.config.token_grid
    emb = torch.randn(1, model.config.prompt.embed_dim, grid, grid)
    box = torch.tensor([[4.0, 6.0, 20.0, 24.0]])
    with torch.no_grad():
        ours, ours_iou = model.predict_discrete(emb, box)
        theirs, theirs_iou = plain.predict_discrete(emb, box)
        assert torch.equal(ours, theirs) and torch.equal(ours_iou, theirs_iou)
        assert torch.equal(model.encode_prompt(emb, box).features,
                           plain.encode_prompt(emb, box).features)
        points = (torch.tensor([[[10.0, 12.0]]]), torch.tensor([[1]]))
        clicked, _ = model.predict_discrete(emb, box, points)
        unadapted, _ = plain.predict_discrete(emb, box, points)
        assert not torch.allclose(clicked, unadapted)


def test_an_evaluation_report_is_written_whole_or_not_at_all(tmp_path):
    """The summary and the per-object CSV are one set: when the JSON's name is taken
    meanwhile, no CSV is left behind (issue 23); rows may differ in their keys."""
    import json

    from napari_imedsam.train.evaluate import write_report

    rows = [{"image": "a", "dice": 0.9}, {"image": "b", "dice": 0.8, "dice_suggested": 0.85}]
    (tmp_path / "r.json").write_text("taken")
    with pytest.raises(FileExistsError):
        write_report({"dice": 0.85}, rows, tmp_path / "r.json")
    assert not (tmp_path / "r.csv").exists() and (tmp_path / "r.json").read_text() == "taken"
    write_report({"dice": 0.85}, rows, tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text()) == {"dice": 0.85}
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "image,dice,dice_suggested" and lines[2] == "b,0.8,0.85"


def test_a_torchvision_that_does_not_match_torch_is_explained():
    from napari_imedsam.session_holder import ModelSpec, explain

    text = explain(RuntimeError("operator torchvision::nms does not exist"),
                   ModelSpec("medsam_lite"), loading=True)
    assert "torch and torchvision do not match" in text and "one index" in text
