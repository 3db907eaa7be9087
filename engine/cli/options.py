"""The options every command shares: the model, and the recipe's options, derived from the
recipe's declared fields (engine.recipe.recipe.Recipe.fields) rather than typed out again."""
from __future__ import annotations

import sys
from pathlib import Path

from engine.errors import UserError
from engine.methods import calibrated as calibrated_methods
from engine.recipe.recipe import Recipe, RecipeError

EXCLUSIVE = ("rank", "rank_ratio")  # a rank, or a fraction of each layer's full rank: not both
# a sweep's grid axes: comma-separated values (default, help)
SWEEP_AXES = {"rank_ratio": ("1", "comma-separated fractions of full rank (1 = no low rank)"),
              "bits": ("16", "comma-separated bit widths, 2-8 or 16"),
              "sparsity": ("0", "comma-separated sparsities in [0, 1)")}


def model_args(p) -> None:
    p.add_argument("model", help="alias (minilm, smollm2), local folder, Hugging Face hub id, or (run) an export folder")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow code from the model's repository")


def flag(name: str) -> str | None:
    """The command-line option of a recipe field ('--group-size'), or None when it has none."""
    spec = Recipe.fields()[name]
    return None if spec.flag == "" else spec.flag or "--" + name.replace("_", "-")


def recipe_args(p, sweep: bool = False, preset: bool = False) -> None:
    """One option per recipe field that has one, in the order the recipe declares them. A
    sweep takes the grid's axes (SWEEP_AXES) as comma-separated values, no --rank (the grid
    sets the rank ratio) and no --recipe."""
    fields = Recipe.fields()
    calibrated = [c for spec in fields.values() for c in spec.allowed or () if c in calibrated_methods()]
    g = p.add_argument_group(f"recipe ({', '.join(calibrated[:-1])} and {calibrated[-1]} run the calibration "
                             "text through the model once)")
    rank = None if sweep else g.add_mutually_exclusive_group()
    default = Recipe()
    for name, spec in fields.items():
        option = flag(name)
        if option is None or (sweep and name in EXCLUSIVE and name not in SWEEP_AXES):
            continue
        where = rank if name in EXCLUSIVE and not sweep else g
        if sweep and name in SWEEP_AXES:
            value, text = SWEEP_AXES[name]
            where.add_argument(option, dest=name, default=value, help=text)
        elif spec.type is bool:  # the option sets the value the default is not
            where.add_argument(option, dest=name, action="store_const", const=not getattr(default, name),
                               help=spec.help)
        else:
            where.add_argument(option, dest=name, type=spec.type, help=spec.help,
                               choices=spec.allowed if spec.type is str else None)
    if not sweep:
        g.add_argument("--recipe", help="a recipe JSON file; options given here override its fields")
    if preset:
        from engine.recipe.presets import PRESETS

        g.add_argument("--preset", choices=list(PRESETS),
                       help="llama.cpp's mix: each layer in the GGML type llama.cpp's quantize gives it "
                            "(embeddings and head included); --quant-method imatrix weights it")


def recipe_options(args, exclude=()) -> dict:
    """The recipe fields given as options: field -> value."""
    return {name: getattr(args, name) for name in Recipe.fields()
            if name not in exclude and flag(name) and getattr(args, name, None) is not None}


def recipe_from(args, exclude=()) -> Recipe:
    """The --recipe file's recipe (or the default one) updated with the options given, as a
    user means them (Recipe.updated: a rank clears the rank ratio, a pattern sets the sparsity...)."""
    base = Recipe()
    if getattr(args, "preset", None):  # its default type, so that options such as --quant-method imatrix hold
        from engine.recipe.presets import PRESETS

        base = Recipe(number_format=PRESETS[args.preset])
    if getattr(args, "recipe", None):
        path = Path(args.recipe)
        if not path.is_file():
            raise UserError(f"--recipe: no such file {args.recipe!r}")
        try:
            base = Recipe.from_json(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise RecipeError(f"--recipe: {args.recipe!r} is not a text file") from None
        except RecipeError as e:
            raise RecipeError(f"--recipe {args.recipe}: {e}") from None
    return base.updated(**recipe_options(args, exclude))


_PRESET_SETS = ("number_format", "bits", "granularity", "group_size", "symmetric", "include_embeddings", "rank",
                "rank_ratio", "sparsity", "pattern")


def check_preset(args) -> None:
    """Refuse, before a model loads, options that --preset would overrule."""
    if not getattr(args, "preset", None):
        return
    given = [flag(f) for f in _PRESET_SETS if f in recipe_options(args)]
    if given or getattr(args, "recipe", None):
        raise UserError(f"--preset sets every layer's number format: drop {', '.join(given or ['--recipe'])}")


def with_preset(args, recipe: Recipe, explorer) -> Recipe:
    """`recipe` as --preset makes it on the explorer's model (per-layer GGML types), or as it is."""
    if not getattr(args, "preset", None):
        return recipe
    from engine.recipe.presets import preset_recipe

    return preset_recipe(args.preset, explorer.layers, explorer.loaded.model.config, base=recipe)


def floats(text: str, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise UserError(f"{option}: give at least one value")
    return values


def out_path(out: str) -> Path:
    """--out as a Path, refused at once when its folder does not exist."""
    path = Path(out)
    if path.parent and not path.parent.exists():
        raise UserError(f"--out: folder {str(path.parent)!r} does not exist")
    return path


def open_explorer(args, model: str | None = None):
    from engine.drivers.explorer import Explorer

    return Explorer.open(model or args.model, args.device, args.trust_remote_code)


def eval_text(args) -> tuple[str | None, str | None]:
    """(the --eval-text file's text, its name for the protocol), or (None, None)."""
    if not getattr(args, "eval_text", None):
        return None, None
    from engine.models.data import read_user_text

    return read_user_text(args.eval_text), f"user file {Path(args.eval_text).name}"


class Progress:
    """A progress bar on stderr, shown from the first update: call it with (step, steps, text);
    a study's results arriving, each with the worker that gave it, are counted in `unit`s."""

    def __init__(self, desc: str, unit: str = "step"):
        self.desc, self.unit, self.bar = desc, unit, None

    def __call__(self, k: int, n: int, what: str = "") -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(desc=self.desc, unit=self.unit, file=sys.stderr)
        self.bar.total = n
        self.bar.set_postfix_str(what, refresh=False)
        self.bar.update(k - self.bar.n)

    def loss(self, k: int, n: int, loss: float) -> None:
        """A distillation step's progress (engine.drivers.distill's callback)."""
        self(k, n, f"loss {loss:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def distill(work, recipe: Recipe, model: str):
    """The recipe's distillation of the workspace's applied recipe, with a progress bar."""
    bar = Progress(f"distill {model}")
    try:
        return work.distill(recipe.distill_steps, recipe.distill_lr, progress=bar.loss)
    finally:
        bar.close()


def mb(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB"
