"""``onnxsq pipeline RECIPE -o WORKDIR``: run the flow's stages from a recipe file, skipping unchanged ones."""

from __future__ import annotations

from pathlib import Path

import click

from ..options import quiet, report_option

EPILOG = """\b
A recipe (TOML; paths relative to the recipe file):
  model = "net.onnx"
  [data]
  train = "train.npz"          # or: source = "sklearn-digits"
  val = "val.npz"
  [[stage]]
  kind = "train"               # train | threshold | optimize | quantize
  stage = "l2"                 # train only: l2 | l1 | sparse | qat
  iters = 600                  # the command's options, in snake_case
\b
Examples: sample_models/recipes/digits.toml, sample_models/recipes/segmentation.toml
"""


@click.command("pipeline", epilog=EPILOG)
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "workdir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Work directory: NN-stage.onnx, their reports, state.json, summary.json/.md, charts.")
@click.option("--force", is_flag=True, help="Run every stage, even those whose inputs and options are unchanged.")
@click.option("--from", "from_stage", metavar="STAGE",
              help="Keep the stages before STAGE (name, NN-name or number) as they are; re-run it and the rest.")
@report_option
def command(recipe: Path, workdir: Path, force: bool, from_stage: str | None, report_path: Path | None) -> None:
    """Run RECIPE's stages (L2 → L1 → threshold → sparse → optimize → quantize/QAT) in WORKDIR.

    A re-run skips stages whose input model, options and data are unchanged, and resumes an
    interrupted training stage from its checkpoint. While a stage runs, a progress bar (on a terminal);
    after each, one line: metric, conv sparsity, size on disk and share of MACs in int8; at the end
    the table of every stage (also summary.json, summary.md and PNG charts).
    """
    from ...pipeline import load_recipe, run_pipeline
    from ...pipeline.summary import table_rows
    from ..render import console, finish, stage_progress, table

    loud = not quiet()
    parsed = load_recipe(recipe)
    with stage_progress(quiet=not loud) as bars:

        def show(row, rows) -> None:  # a line for each stage run, as it ends; the whole table at the end
            bars.finish(row.stage)
            if loud and row.status in ("ran", "resumed"):
                cols, cells = table_rows([row])
                values = "  ".join(f"{c} {v}" for c, v in zip(cols[2:], cells[0][2:]))
                console().print(f"after {row.stage}: {cells[0][1]}  {values}", highlight=False, markup=False)

        result = run_pipeline(parsed, workdir, force=force, from_stage=from_stage, on_row=show,
                              on_progress=bars.update)
    if loud:
        console().print(table(f"pipeline {recipe.name}: {workdir}", *table_rows(result.rows)))
        console().print(f"summary: {result.files['json']}, {result.files['markdown']}"
                        + "".join(f", {p}" for k, p in result.files.items() if k not in ("json", "markdown")))
    finish(result.report(), report_path, quiet=True)  # the runner has logged its warnings already
