"""The command-line reference of the documentation, generated from the parsers themselves
(`python -m engine` and `python -m charts`): the `cli-reference` marker of docs/hooks.py."""
from __future__ import annotations

import argparse

from page_text import cell, code, table


def cli_reference(level: int = 2) -> str:
    """Every command: its help, usage, arguments and options, from the parsers themselves."""
    from charts import cli as charts_cli
    from engine import cli

    engine_parser = cli.build_parser()
    charts_parser = cli.build_parser(extra=(charts_cli.add_parser,), prog=charts_cli.PROG)
    commands = _subcommands(engine_parser)
    added = {n: c for n, c in _subcommands(charts_parser).items() if n not in commands}

    h = "#" * level
    out = [f"{h} {code(engine_parser.prog)}", "", engine_parser.description or "", "",
           _usage(engine_parser), "", _options(engine_parser), ""]
    out += [f"Commands: {', '.join(f'[{code(n)}](#{n})' for n in [*commands, *added])}.", ""]
    for name, (parser, help_) in [*commands.items(), *added.items()]:
        said = (help_ or "").strip().rstrip(".")
        out += [f"{h} {code(name)} {{ #{name} }}", "", (said[:1].upper() + said[1:] + ".\n") if said else "",
                _usage(parser), ""]
        if parser.description:
            out += [parser.description, ""]
        out += [_options(parser), ""]
    return "\n".join(out)


def _subcommands(parser) -> dict:
    """name -> (its parser, its one-line help), in the parser's order."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in action._choices_actions}
    return {name: (p, helps.get(name)) for name, p in action.choices.items()}


def _usage(parser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=80)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return "```text\n" + formatter.format_help().strip() + "\n```"


def _options(parser) -> str:
    """One table per argument group of the parser (its positionals, its options, each titled group)."""
    out = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help is not argparse.SUPPRESS
                   and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
        if not actions:
            continue
        title = group.title or ""
        heading = {"positional arguments": "Arguments", "options": "Options"}.get(title, title[:1].upper() + title[1:])
        rows = []
        for a in actions:
            formatter = argparse.HelpFormatter(parser.prog)
            help_ = formatter._expand_help(a) if a.help else ""
            if a.choices is not None:
                help_ += f" (one of: {', '.join(f'`{c}`' for c in a.choices)})"
            default = a.default
            if (default not in (None, False, argparse.SUPPRESS) and not isinstance(a, argparse._StoreConstAction)
                    and "default" not in help_):
                help_ += f" (default: {default})"
            if a.option_strings:
                shown = a.metavar or a.dest.upper()  # choices are said in the help, not in a {a,b,...} metavar
                metavar = formatter._format_args(_with_metavar(a, shown), shown) if a.nargs != 0 else ""
                names = ", ".join(f"{o} {metavar}".strip() for o in a.option_strings)
            else:
                names = a.metavar or a.dest
            help_ = help_ or "—"
            rows.append([f"`{names}`", help_ + (" **Required.**" if a.required and a.option_strings else "")])
        first = "Argument" if heading == "Arguments" else "Option"
        out += [f"**{cell(heading)}**", "", table([first, "What it does"], rows)]
    return "\n".join(out)


def _with_metavar(action, metavar: str):
    import copy

    action = copy.copy(action)
    action.metavar = metavar
    return action
