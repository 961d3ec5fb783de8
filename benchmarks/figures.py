"""Each task README's figures table, rendered from ``benchmarks/results/figures.json``.

The JSON file is the one source of every current figure: per task, a list of runs (the default
``make train`` run first), each with its label, metrics, wall time in seconds (or null), command,
machine and date, and an optional note on the conditions. ``make docs`` runs this script, which
rewrites the block between the figure markers of ``tasks/<task>/README.md``; a test fails when a
README's block differs. Measurement history goes to ``benchmarks/results/history-<task>.md``.

    python benchmarks/figures.py          # rewrite every task README's figures block
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "benchmarks" / "results" / "figures.json"
BEGIN = "<!-- figures:begin -->"
END = "<!-- figures:end -->"
FIELDS = {"label", "metrics", "wall_s", "command", "machine", "date"}


def _refuse_constant(name: str):
    raise ValueError(f"{SOURCE}: {name} is not JSON; expected a finite number")


def load(path: Path = SOURCE) -> dict[str, list[dict]]:
    """The figures per task, checked: strict JSON and every run with the fields the table shows."""
    figures = json.loads(path.read_text(), parse_constant=_refuse_constant)
    for task, runs in figures.items():
        for run in runs:
            missing = FIELDS - set(run)
            if missing:
                raise ValueError(f"{path}: a {task} run lacks {sorted(missing)}: {run}")
    return figures


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def table(runs: list[dict]) -> str:
    lines = [
        "| run | metrics | wall time | command | machine, date |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        what = run["label"] + (f"; {run['note']}" if run.get("note") else "")
        metrics = " · ".join(f"`{key}` {value:.4f}" for key, value in run["metrics"].items())
        command = f"`{run['command']}`" if run["command"] != "—" else "—"
        lines.append(
            f"| {what} | {metrics} | {duration(run['wall_s'])} | {command} | {run['machine']}, {run['date']} |"
        )
    return "\n".join(lines)


def render(readme: str, runs: list[dict]) -> str:
    """``readme`` with the text between its figure markers replaced by the table of ``runs``."""
    block = f"{BEGIN}\n<!-- written by `make docs` from benchmarks/results/figures.json -->\n{table(runs)}\n{END}"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        raise ValueError(f"no {BEGIN} … {END} block")
    return pattern.sub(lambda _: block, readme, count=1)


def main() -> None:
    """Rewrite every README that has the markers; name all that lack them, then fail."""
    missing = []
    for task, runs in load().items():
        readme = ROOT / "tasks" / task / "README.md"
        text = readme.read_text()
        try:
            rendered = render(text, runs)
        except ValueError as error:
            missing.append(f"{readme.relative_to(ROOT)}: {error}")
            continue
        if rendered != text:
            readme.write_text(rendered)
    if missing:
        sys.exit("\n".join(missing))


if __name__ == "__main__":
    main()
