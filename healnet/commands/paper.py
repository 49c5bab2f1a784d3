"""`healnet paper {cohort,tables,figures}`: the paper's tables and figures (rules in paper.smk).

- `cohort`: one cohort's paper models evaluated (cindex.tsv, cindex_missing.tsv), the Table 2 XOR
  baseline (xor.tsv, xor_patients.tsv) and the attention inspection folder;
- `tables`: table1.tsv, table1.md and table2.tsv over the paper cohorts;
- `figures`: uplift.png and uplift.tsv (Figure 2).
"""

from __future__ import annotations

import argparse
import json

from healnet.commands.evaluate import add_cohort_arguments, open_cohort


def _log_option(p: argparse.ArgumentParser) -> None:
    # `--log` also after the action (`healnet paper tables ... --log x`); SUPPRESS keeps a value
    # given before the action from being reset to None by the sub-parser's default.
    p.add_argument("--log", default=argparse.SUPPRESS, help="also write the log to this file")


def _common_aggregate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cohorts", nargs="+", required=True, help="paper cohorts, in column order")
    p.add_argument("--cohort-keys", nargs="+", help="published column per cohort (e.g. blca); default the names")
    p.add_argument("--cindex", nargs="+", required=True, help="results/paper/<cohort>/cindex.tsv per cohort, in order")
    p.add_argument("--paper", help="config section `paper` as JSON")
    p.add_argument("--modalities", required=True, help="JSON {model: [modality, ...]} of the paper models")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="<action>", required=True)

    c = sub.add_parser("cohort", help="evaluate a cohort's paper models, XOR baseline, attention inspection")
    add_cohort_arguments(c)
    c.add_argument("--outdir", required=True, help="results/paper/<cohort>: cindex, cindex_missing, xor tables")
    c.add_argument("--inspect", required=True, help="output folder of the attention inspection")
    c.add_argument("--paper", help="config section `paper` as JSON")
    c.add_argument("--evaluation", help="config section `evaluation` as JSON")
    c.add_argument("--patching", help="config section `patching` as JSON (tile size)")
    _log_option(c)

    t = sub.add_parser("tables", help="table1.tsv, table1.md and table2.tsv")
    _common_aggregate(t)
    t.add_argument("--missing", nargs="+", required=True, help="results/paper/<cohort>/cindex_missing.tsv per cohort")
    t.add_argument("--xor", nargs="+", required=True, help="results/paper/<cohort>/xor.tsv per cohort")
    t.add_argument("--table1", required=True, help="output table1.tsv")
    t.add_argument("--table1-md", required=True, help="output table1.md (Tables 1 and 2 as Markdown)")
    t.add_argument("--table2", required=True, help="output table2.tsv")
    _log_option(t)

    f = sub.add_parser("figures", help="uplift.png and uplift.tsv (Figure 2)")
    _common_aggregate(f)
    f.add_argument("--png", required=True, help="output uplift.png")
    f.add_argument("--tsv", required=True, help="output uplift.tsv")
    _log_option(f)


def _modalities(text: str) -> dict[str, list[str]]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f'--modalities is not JSON ({err}); pass e.g. \'{{"snn": ["omics"]}}\'') from None
    if not isinstance(value, dict):
        raise ValueError("--modalities must be a JSON object {model: [modality, ...]}")
    return value


def _keys(args: argparse.Namespace) -> dict[str, str]:
    keys = args.cohort_keys or args.cohorts
    if len(keys) != len(args.cohorts):
        raise ValueError(f"--cohort-keys has {len(keys)} values for {len(args.cohorts)} --cohorts; give one per cohort")
    return dict(zip(args.cohorts, keys))


def run(args: argparse.Namespace) -> None:
    from healnet.cli import parse_params
    from healnet.config import Paper

    paper = parse_params(args.paper, Paper)
    if args.action == "cohort":
        _run_cohort(args, paper)
    elif args.action == "tables":
        from healnet.paper.tables import write_tables

        t1, _ = write_tables(
            args.cohorts,
            args.cindex,
            args.missing,
            args.xor,
            paper,
            _modalities(args.modalities),
            _keys(args),
            args.table1,
            args.table1_md,
            args.table2,
        )
        cols = ["model"] + [f"{c}_{k}" for c in args.cohorts for k in ("mean", "std", "published")]
        print(t1[cols].to_string(index=False, float_format="%.3f"))
    else:
        from healnet.paper.figures import write_uplift

        table = write_uplift(
            args.cohorts, args.cindex, paper, _modalities(args.modalities), _keys(args), args.png, args.tsv
        )
        print(table.to_string(index=False, float_format="%.2f"))


def _run_cohort(args: argparse.Namespace, paper) -> None:
    from healnet.cli import parse_params
    from healnet.config import Evaluation, Patching
    from healnet.paper.cohort import paper_cohort

    cohort = open_cohort(args)
    table = paper_cohort(
        args.models,
        cohort,
        parse_params(args.evaluation, Evaluation),
        paper,
        parse_params(args.patching, Patching),
        args.outdir,
        args.inspect,
    )
    print(table[table["fold"].isin(["mean", "std"])][["model", "fold", "cindex"]].to_string(index=False))
