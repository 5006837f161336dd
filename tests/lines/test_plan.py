"""The workflow's planning reads the registry: the ``frontier.lines`` schema and checks, the lines, shares, job
groups and inputs of a config, the calibration files, and a registry that imports no torch."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from apc.common.errors import ConfigError
from apc.common.layout import Layout
from apc.lines import all_lines
from apc.lines.plan import (calibration_lines, frontier_lines, job_groups, line_inputs, line_shares, lines_schema,
                            resolve_config)
from apc.lines.store import calibration_summary, read_calibration, write_calibration

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path, preset="default", **over):
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    return resolve_config({**raw, "preset": preset, "outdir": str(tmp_path / "res"), **over}, root=ROOT)


def test_the_registry_and_the_planning_import_no_torch():
    code = ("import sys\nimport apc.lines, apc.lines.plan\nlines = apc.lines.all_lines()\n"
            "assert len(lines) >= 14, list(lines)\nbad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'triton'))\nprint(bad or 'clean')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip() == "clean", out.stdout + out.stderr[-2000:]


def test_the_schema_has_one_key_per_training_free_line():
    schema = lines_schema()
    free = [f for f, impl in all_lines().items() if impl.training_free]
    assert list(schema["properties"]) == free and schema["additionalProperties"] is False
    teal = schema["properties"]["teal"]["anyOf"][0]
    assert "allocation" in teal["properties"] and teal["additionalProperties"] is False


def test_defaults_filled_and_a_line_turned_off(tmp_path):
    c = _config(tmp_path, frontier={"lines": {"griffin": False, "scap": {}}})
    assert "griffin" not in c["frontier"]["lines"] and c["frontier"]["lines"]["scap"] == {}
    # the default preset's allocation, as given, and the line's default for the key it leaves out
    assert c["frontier"]["lines"]["teal"] == {"allocation": ["uniform"], "compute_scope": ["ffn"]}
    lines = frontier_lines(c, ["down_in"])
    assert "griffin" not in lines and "scap" in lines and lines.index("scap") < lines.index("oracle.per_layer.apc-k128-s0")


@pytest.mark.parametrize("over,message", [
    ({"lines": {"chesss": {}}}, "config key 'frontier.lines.chesss': unknown key (allowed here: threshold, random, cats"),
    ({"lines": {"griffin": {"prompt": 1}}}, "config key 'frontier.lines.griffin'"),
    ({"lines": {"cats": {"k": 3}}}, "config key 'frontier.lines.cats'"),
    ({"lines": {"cats": True}}, "config key 'frontier.lines.cats'"),
])
def test_bad_line_settings_stop_with_the_key_named(tmp_path, over, message):
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, frontier=over)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_calibrations_shares_and_job_groups_follow_the_lines(tmp_path):
    c = _config(tmp_path)
    assert set(calibration_lines(c)) == {"cats", "chess", "teal", "wina", "rsparse"}
    assert line_shares(c, "chess") == line_shares(c, "cats") == [pytest.approx(s) for s in (0.1, 0.4, 0.7)]
    groups = dict(job_groups(c))
    assert {"threshold-self", "teal", "rsparse", "griffin", "neuron-linear-k128-x1",
            "oracle.per_layer.apc-k128-s0"} <= set(groups[(0.4, 0.6, 0.8)])
    assert sorted(groups[tuple(line_shares(c, "cats"))]) == ["cats", "chess"]
    assert not any(line.startswith("experts-") for lines in groups.values() for line in lines)  # a job of its own
    ins = line_inputs(c, Layout(c["outdir"]), "down_in", "chess")
    assert ins["calibration"].endswith("calibration/chess.npz") and "kept" not in ins
    assert line_inputs(c, Layout(c["outdir"]), "down_in", "threshold-self")["kept"].endswith("thresholds_kept.json")
    ex = line_inputs(c, Layout(c["outdir"]), "down_in", "experts-learned.s0.2-e32")
    assert ex["experts"].endswith("experts/down_in/s0.2-e32/experts.npy") and "router" in ex


def test_a_calibration_file_round_trips_its_table_and_arrays(tmp_path):
    table = {"0.4": {"input": [0.1, 0.2], "train_compute_share": 0.41}, "factors": [{"gate": (torch.ones(3, 2),)}],
             "modes": [np.arange(4, dtype=np.float32)], "meta": {"line": "x"}}
    path = tmp_path / "calibration" / "x.npz"
    write_calibration(path, table)
    back = read_calibration(path)
    assert back["0.4"] == table["0.4"] and back["meta"] == {"line": "x"}
    assert torch.equal(back["factors"][0]["gate"][0], torch.ones(3, 2)) and back["modes"][0].dtype == torch.float32
    assert calibration_summary(path)["modes"][0] == {"__array__": "a1", "shape": [4], "dtype": "float32"}
    (tmp_path / "bad.npz").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="bad.npz: not a line calibration file"):
        read_calibration(tmp_path / "bad.npz")
    assert [p.name for p in path.parent.iterdir()] == ["x.npz"]  # written atomically: no temporary left


def test_a_key_that_only_names_lines_is_no_setting_of_theirs(tmp_path):
    from apc.lines.plan import settings_of

    one = _config(tmp_path, frontier={"lines": {"teal": {"allocation": ["uniform"]}}})
    more = _config(tmp_path, frontier={"lines": {"teal": {"allocation": ["uniform", "block"],
                                                          "compute_scope": ["ffn", "model"]}}})
    assert {"teal", "teal-block", "teal-model"} <= set(frontier_lines(more, ["down_in"]))
    # adding teal-block and teal-model leaves teal's own settings, and so its jobs' params, as they were
    assert settings_of(one, "teal") == settings_of(more, "teal") == {}
    assert settings_of(more, "griffin") == {"prompt": None}
