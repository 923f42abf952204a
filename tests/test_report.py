"""``slimtrain report``: the committed tables are exactly what the committed CSVs give; hand edits,
unknown blocks and unclosed markers are caught; single-seed CSVs show n=1 without intervals."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from slimtrain.cli import main
from slimtrain.tasks.report import BLOCKS, FIGURES, ReportError, markdown_files, regenerate, regenerate_text, render_block

ROOT = Path(__file__).resolve().parents[1]


def _copy_repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", root / "docs", ignore=shutil.ignore_patterns("*.png"))
    shutil.copy(ROOT / "README.md", root / "README.md")
    assets = root / "src" / "slimtrain" / "assets"  # the shipped models' JSON feed the README's table
    assets.mkdir(parents=True)
    for f in (ROOT / "src" / "slimtrain" / "assets").glob("*.json"):
        shutil.copy(f, assets / f.name)
        pt = f.with_suffix(".pt")
        (assets / pt.name).write_bytes(b"\0" * pt.stat().st_size)  # only its size is read
    return root


def test_committed_tables_are_what_the_csvs_give_byte_for_byte():
    assert regenerate(ROOT, check=True, figures=False) == []
    used = {name for f in markdown_files(ROOT) for name in BLOCKS if f"<!-- generated:{name} -->" in f.read_text()}
    assert used == set(BLOCKS)  # every renderer feeds a committed table


def test_a_hand_edit_is_caught_and_regenerating_restores_it(tmp_path, capsys):
    root = _copy_repo(tmp_path)
    vad_md = root / "docs" / "vad.md"
    original = vad_md.read_text()
    vad_md.write_text(original.replace("| DCRNNVAD 0.5 | DCL | 43 ± 5 | 1.84 ± 0.25 |", "| DCRNNVAD 0.5 | DCL | 40 | 1.50 |", 1))
    assert vad_md.read_text() != original
    assert main(["report", "--check", "--no-figures", "--root", str(root)]) == 1
    assert "docs/vad.md" in capsys.readouterr().err
    assert main(["report", "--no-figures", "--root", str(root)]) == 0
    assert vad_md.read_text() == original


def test_tables_follow_the_csv(tmp_path):
    root = _copy_repo(tmp_path)
    csv_path = root / "docs" / "vad_results" / "sweep.csv"
    # seed 0 of DCRNNVAD 0.5: AUC 0.960234 -> 0.760234 moves the 5-seed mean by -0.04 and widens its interval
    csv_path.write_text(csv_path.read_text().replace(",0.960234,", ",0.760234,", 1))
    changed = regenerate(root, figures=False)
    assert {p.name for p in changed} == {"vad.md", "README.md"}
    vad_md = (root / "docs" / "vad.md").read_text()
    assert "| DCRNNVAD 0.5 | DCL | 43 ± 5 | 1.84 ± 0.25 | 3898 ± 618 | 0.9055 ± 0.1128 |" in vad_md
    # the paired comparisons follow too: above the gates front before, no longer significant
    assert "| DCRNNVAD 0.5 | 5 | 1.84 ± 0.25 | 0.946 ± 0.052 | n.s. (-0.012 [-0.053, +0.029]) | n.s. (-0.022 [" \
        "-0.072, +0.028]) | above (+0.068 [" in ROOT.joinpath("docs", "vad.md").read_text()
    assert "| DCRNNVAD 0.5 | 5 | 1.84 ± 0.25 | 0.906 ± 0.113 | n.s. (-0.052 [-0.163, +0.059]) | n.s. (-0.062 [" \
        "-0.177, +0.053]) | n.s. (+0.028 [" in vad_md


def test_single_seed_csvs_show_n1_and_no_interval():
    text = render_block("spoof-sweep-single", ROOT)
    assert "±" not in text
    assert "| fixed w8 | - | - | 334.4 | 30.02 |" in text
    # the 5-seed VAD sweep shows n, intervals and paired verdicts; the anchors (deterministic, one run) stay bare
    vad = render_block("vad-readme", ROOT)
    assert "| DCRNNVAD 0.5 | DCL | 5 | 43 ± 5 | 1.84 ± 0.25 | 0.946 ± 0.052 | 12.18 ± 8.05 | 16.2 ± 4.1 | n.s. (" in vad
    assert "| Silero VAD (8 kHz) | anchor | 1 | - | - | 0.966 | 6.58 | 6.8 | - |" in vad
    assert "_5 seeds per row, mean ± 95 % Student-t half-width over seeds;" in vad
    # the Transformer rows have 5 seeds too: intervals in its table, the seed counts in the paper caption
    tr = render_block("vad-transformer", ROOT)
    assert "| TrVAD (baseline) | fixed | 80 | 10.20 | 15681 | 0.9634 ± 0.0014 |" in tr and "| n=1 |" not in tr
    assert "| DTrVAD 0.5 | 5 | 4.90 ± 0.41 | 0.960 ± 0.003 | n.s. (-0.004 [-0.009, +0.001]) | - |" \
        in render_block("vad-front", ROOT)
    assert ("CRNN: mean ± 95 % half-width over 5 seeds; Transformer: mean ± 95 % half-width over 5 seeds."
            in render_block("paper-vad", ROOT))
    # the multi-seed anti-spoofing sweep shows n and intervals; its alpha-4 rows (one seed) stay bare
    multi = render_block("spoof-readme", ROOT)
    assert "| ResNet34 w8 (baseline) | - | - | - | 3 |" in multi and "±" in multi
    assert "| DynResNet34 | X (all) | 0.5 | 4 | 1 |" in multi


def test_bad_markers_are_named():
    with pytest.raises(ReportError, match="x.md: unknown generated block 'nope'"):
        regenerate_text("a\n<!-- generated:nope -->\n<!-- /generated:nope -->\n", ROOT, "x.md")
    with pytest.raises(ReportError, match=r"x.md:2: generated block 'synthetic' has no closing"):
        regenerate_text("a\n<!-- generated:synthetic -->\nold\n", ROOT, "x.md")
    # text outside blocks is kept byte for byte
    text = "head\n<!-- generated:vad-anchors -->\nstale\n<!-- /generated:vad-anchors -->\ntail  \n"
    out = regenerate_text(text, ROOT, "x.md")
    assert out.startswith("head\n<!-- generated:vad-anchors -->\n| model | params | AUC |")
    assert out.endswith("| Silero VAD (8 kHz) | 462594 | 0.9658 | 0.9335 | 6.58 | 6.8 | 8.7 | 4.0 | 7.1 |\n"
                        "<!-- /generated:vad-anchors -->\ntail  \n")


def test_figures_are_drawn_from_the_csvs(tmp_path):
    root = _copy_repo(tmp_path)
    assert main(["report", "--root", str(root)]) == 0
    for fig in FIGURES:
        png = (root / fig.path).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000, fig.path


def test_the_epochs_block_sets_one_length_against_the_12_epoch_sweep(tmp_path):
    """The 12-vs-24-epoch table pairs every model of the two sweeps; a sweep.csv of mixed lengths is refused by name."""
    from slimtrain.tasks.vad.sweep import read_sweep_csv, write_sweep_csv

    text = render_block("vad-epochs", ROOT)
    assert "| model | method | MFLOP/s, 12 / 24 epochs | AUC, 12 epochs | AUC, 24 epochs |" in text
    assert "| DTrVAD 0.5 | DCL |" in text and "| CRNNVAD x0.5 | fixed |" in text
    root = _copy_repo(tmp_path)
    rows = read_sweep_csv(root / "docs" / "vad_results" / "sweep.csv")
    next(r for r in rows if r["method"] == "fixed")["epochs"] = 12
    write_sweep_csv(rows, root / "docs" / "vad_results" / "sweep.csv")
    with pytest.raises(ReportError, match="rows of one length"):
        render_block("vad-epochs", root)


def test_the_shortcut_table_shows_only_the_rows_a_later_corpus_changes():
    text = render_block("spoof-shortcuts", ROOT)
    rows = [line.split(" | ")[:2] for line in text.splitlines() if line.startswith("| ")]
    later = {(c.strip("| "), f) for c, f in rows if c.strip("| ") in ("like-source", "unit-selection")}
    # its pooled row, the splices it builds otherwise, the family the first corpus lacks; nothing else again
    assert later == {("like-source", "all"), ("like-source", "A8"), ("like-source", "A9"),
                     ("unit-selection", "all"), ("unit-selection", "A11")}
    # each change is paired against the recipe it changes, not against every other arm
    assert "| x16ls vs x16 | x16ls256 vs x16ls | x16u vs x16 |" in text and "x16u vs x16ls" not in text


def test_the_a11_voice_table_pools_seeds_and_lists_only_held_out_voices():
    import csv

    text = render_block("spoof-by-speaker-a11", ROOT)
    rows = list(csv.DictReader((ROOT / "docs" / "spoof_results" / "by_speaker_a11.csv").open()))
    held = sorted({r["source"] for r in rows if r["heldout"] == "True"})
    assert len(held) < len({r["source"] for r in rows})  # the CSV holds training voices too
    assert [line.split(" | ")[0][2:] for line in text.splitlines()[2:2 + len(held)]] == held
    assert "EER vs A11 x16u (3 seeds) %" in text and "x16u-seed" not in text.split("\n\n")[0]


def test_the_aasist_table_pairs_dcl_with_aasist_l_by_seed(tmp_path):
    """Each run of AASIST_RUNS gets both arms (mean ± half-width) and a paired row; a CSV without the
    held-out column (the quick run's) shows '-' there, and a consistent same-seed gap is a verdict."""
    import csv

    from slimtrain.tasks.report import AASIST_RUNS

    files = [(name, i > 0) for i, (_, run, _) in enumerate(AASIST_RUNS) for name, _ in run]
    assert len(files) > 2  # the human-voice run's seeds lie in two files
    for k, (name, heldout) in enumerate(files):
        seeds = range(3) if k < 2 else range(3, 5)  # (more seeds in the second file than recorded: any count)
        path = tmp_path / "docs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cols = ["arm", "seed", "params_exported", "macs_per_second", "eer_pooled", "eer_unseen", "eer_known"]
        cols += ["eer_heldout"] if heldout else []
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for s in seeds:
                for arm, eer, params in (("dcl-aasist", 10 + s, 80000 + s), ("aasist-l", 5 + s + 0.1 * s, 85178)):
                    w.writerow({"arm": arm, "seed": s, "params_exported": params, "macs_per_second": 2e8,
                                "eer_pooled": eer, "eer_unseen": eer, "eer_known": 7.0 + (s if arm == "dcl-aasist" else -s),
                                **({"eer_heldout": eer} if heldout else {})})
    for k, (name, _) in enumerate(AASIST_RUNS[1][2]):  # the same models scored on the unit-selection corpus
        path = tmp_path / "docs" / name
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["arm", "seed", "eer_heldout_A11"])
            w.writeheader()
            for s in (range(3) if k == 0 else range(3, 5)):
                w.writerow({"arm": f"dcl-aasist-seed{s}", "seed": 0, "eer_heldout_A11": 20 + s})
                w.writerow({"arm": f"aasist-l-seed{s}", "seed": 0, "eer_heldout_A11": 30 + s})
    text = render_block("spoof-aasist", tmp_path)
    paired = [line for line in text.splitlines() if "paired by seed" in line]
    assert len(paired) == 2
    quick_cells = paired[0].rstrip(" |").split(" | ")[-5:]
    assert quick_cells[0].startswith("worse (+4.9 [") and quick_cells[1] == "-" and quick_cells[4] == "-"
    assert quick_cells[3].startswith("n.s. (")  # +-2 around 0
    assert paired[1].rstrip(" |").split(" | ")[-4].startswith("worse (")
    assert paired[1].rstrip(" |").split(" | ")[-1] == "better (-10.0 [-10.0, -10.0])"  # A11: 20+s against 30+s
    assert "| DCL-shrunk AASIST, budget 85,306 params | 5 |" in text  # seeds 0-2 and 3-4 of one run
    assert "| 3 | 80,001 ± 2 | 200 |" in text  # seeds, parameters 80,000-80,002, MMAC/s
