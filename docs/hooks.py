"""MkDocs hooks: the parts of the site that are generated from tricklab's code when the site is built.

A page holds a marker, an HTML comment such as ``<!-- generated: config-reference -->``, and the build replaces it
with Markdown made from the code, so these pages cannot drift from it:

- ``config-reference``: every config key from the pydantic models in ``tricklab.config`` (type, default, bounds,
  the names a key accepts as the validator itself reports them, and the comment beside the field), the defaults as
  YAML, and each built-in model's own defaults;
- ``verdicts``: every check the doctor registers in ``tricklab.diagnostics.verdicts.CHECKS``, with its rule and
  thresholds from that module's docstring table (each documented threshold checked against the constant in the
  code: a mismatch, or a check missing from the table, fails the build), the figures it reports, its citation
  and the justification of its threshold (from ``docs/verdicts-why.md``, the design rationale kept out of the code);
- ``loop-bugs``: the same for the loop checks of ``tricklab.diagnostics.loop_bugs`` (``LOOP_CHECKS``);
- ``api``: one ``::: module.name`` block (rendered by mkdocstrings) for every public name of ``tricklab``;
- ``names``: every registered name of every family, with its help, as ``tricklab list`` prints them.

The notebooks in ``examples/`` are added to the site's files, so mkdocs-jupyter renders them where they live.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import logging
import re
import textwrap
import types
import typing
from pathlib import Path

import yaml
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("griffe_rst", Path(__file__).with_name("griffe_rst.py"))
_griffe_rst = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_griffe_rst)
rst_to_markdown = _griffe_rst.rst_to_markdown  # Sphinx roles and `::` blocks of docstrings, as Markdown
log = logging.getLogger("mkdocs.hooks.tricklab")


# --- notebooks ----------------------------------------------------------------------------------------------------


@event_priority(100)  # before mkdocs-jupyter's own on_files, which picks the notebooks up from the file list
def on_files(files, config):
    for nb in sorted((REPO / "examples").glob("*.ipynb")):
        files.append(File(f"examples/{nb.name}", str(REPO), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    for marker, make in GENERATORS.items():
        tag = f"<!-- generated: {marker} -->"
        if tag in markdown:
            markdown = markdown.replace(tag, make())
    return markdown


# --- the config reference -----------------------------------------------------------------------------------------


def _comments(cls) -> dict[str, str]:
    """The comment at the end of each field's line in ``cls``'s source: ``name: int = 0  # what it is``."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    out = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            line = lines[node.end_lineno - 1]
            if "#" in line:
                out[node.target.id] = line.split("#", 1)[1].strip()
    return out


def _type_name(annotation) -> str:
    """``int | None`` → "an integer, or null"; ``Literal["a", "b"]`` → "`a`, `b`"."""
    if typing.get_origin(annotation) is typing.Literal:
        return ", ".join(f"`{a}`" for a in typing.get_args(annotation))
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = " or ".join(_type_name(a) for a in args if a is not type(None))
        return f"{inner}, or `null`" if type(None) in args else inner
    words = {int: "an integer", float: "a number", bool: "`true` or `false`", str: "a string", dict: "a mapping",
             tuple: "a list"}
    return words.get(typing.get_origin(annotation) or annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(field) -> str:
    words = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
    parts = []
    for meta in field.metadata:
        for attr, word in words.items():
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{word} {value:g}" if isinstance(value, float) else f"{word} {value}")
    if any(getattr(m, "allow_inf_nan", None) is False for m in field.metadata):
        parts.append("finite")
    return ", ".join(parts)


def _names_allowed(key: str) -> str:
    """What the validator itself lists as valid for a name-valued key, by giving it a name that cannot exist."""
    from tricklab.config import load_config
    from tricklab.errors import TrickLabError

    try:
        load_config(overrides=[f"{key}=no_such_name_zz"])
    except TrickLabError as e:
        found = re.search(r"\(valid: (.*)\)\s*$", str(e))
        if found:
            return found.group(1)
    return ""


#: What a key means, for the fields whose schema has neither a description nor a comment beside it. A key here that
#: the schema no longer has fails the build (strict), so this list cannot keep a key that is gone.
NOTES = {
    "data.name": "the dataset: a registered name, or an import path `package.module:loader`",
    "data.kwargs": "the loader's own keyword arguments, checked against its signature",
    "data.val_fraction": "carved from the training set, seeded by `train.seed`",
    "data.scale": "input scaling, fitted on the training split",
    "data.batch_size": "examples per batch (the global batch under torchrun)",
    "model.name": "the architecture: a registered name, or an import path `package.module:factory`",
    "model.depth": "hidden layers (mlp), conv blocks (cnn), residual blocks (resnet), modules (inception)",
    "model.width": "hidden units (mlp), base channels (conv nets)",
    "model.activation": "the hidden layers' activation",
    "model.norm": "the normalization layer of each hidden Linear/Conv layer",
    "model.norm_position": "the norm layer before or after the activation",
    "model.dropout": "element dropout in dense layers, channel dropout in conv layers",
    "model.residual": "residual connections (mlp, cnn, resnet)",
    "model.kwargs": "a plugin model's own keyword arguments, checked against its signature",
    "callbacks.name": "a registered callback, or an import path `package.module:factory`",
    "callbacks.kwargs": "the callback factory's keyword arguments, checked against its signature",
    "optim.name": "the optimizer",
    "optim.lr": "the learning rate (where the schedule starts)",
    "optim.weight_decay": "on weights only (not biases or norm parameters)",
    "clip.mode": "gradient clipping: by global norm, by value, or adaptive (AGC)",
    "clip.threshold": "θ (λ for `agc`)",
    "schedule.name": "the learning-rate schedule",
    "schedule.warmup_epochs": "epochs of linear warm-up (`warmup_cosine`)",
    "schedule.min_lr": "the LR the decay ends at (`cosine`, `warmup_cosine`), the floor of `plateau`",
    "early_stopping.enabled": "stop when `monitor` has not improved by `min_delta` for `patience` epochs",
    "early_stopping.monitor": "the validation metric watched",
    "early_stopping.patience": "epochs without improvement before stopping",
    "early_stopping.min_delta": "the least change that counts as an improvement",
    "early_stopping.restore_best": "restore the best epoch's weights at the end, whatever ended the run",
    "averaging.ensemble": "K > 1 trains K seeds and averages their predicted probabilities",
    "averaging.swa_lr": "SWALR target LR",
    "train.epochs": "passes over the training set",
    "train.seed": "seeds python, numpy, torch, the split and the data order",
    "train.device": "`auto`: CUDA when torch sees a GPU, else the CPU",
    "checkpoint.every": "epochs between checkpoints",
    "checkpoint.keep_last": "checkpoints kept",
    "diagnostics.every": "steps between probe samples (doctor, `--diagnose`)",
    "diagnostics.steps": "length of the doctor's short training run",
}


def _names_as_code(valid: str) -> str:
    """``mlp, cnn, or an import path package.module:callable`` → the names and the path as code."""
    names, _, path = valid.partition(", or an import path ")
    shown = ", ".join(f"`{n.strip()}`" for n in names.split(",") if n.strip())
    return f"{shown}, or an import path `{path}`" if path else shown


def _yaml(value) -> str:
    """A default as it is written in a YAML config: ``null``, ``true``, ``0.001``, ``mnist``, ``{}``, ``[]``."""
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def config_reference() -> str:
    from tricklab.config import Config, load_config
    from tricklab.models import MODEL_SHAPE

    default = Config()
    seen: set[str] = set()
    out = []
    for section, field in Config.model_fields.items():
        model = field.annotation
        if typing.get_origin(model) is tuple:  # callbacks: a list of {name, kwargs}
            model = typing.get_args(model)[0]
        doc = inspect.getdoc(model) or ""
        comments = _comments(model)
        out += [f"### `{section}`", "", rst_to_markdown(doc), ""]
        if section in _comments(Config):
            out += [_comments(Config)[section], ""]
        out += ["| key | default | allowed | what |", "|---|---|---|---|"]
        for name, sub in model.model_fields.items():
            key = f"{section}.{name}"
            if section == "callbacks":
                value = "(required)" if sub.is_required() else sub.default
            else:
                value = getattr(getattr(default, section), name)
            shown = "per model" if section == "model" and name in MODEL_SHAPE else f"`{_yaml(value)}`"
            allowed = ", ".join(filter(None, [_type_name(sub.annotation), _bounds(sub)]))
            if str in (sub.annotation, *typing.get_args(sub.annotation)) and section != "callbacks":
                names = _names_as_code(_names_allowed(key))
                if names:
                    allowed = f"{names}, or `null`" if type(None) in typing.get_args(sub.annotation) else names
            what = sub.description or comments.get(name) or NOTES.get(key, "")
            seen.add(key)
            out.append(f"| `{key}` | {shown} | {_md(allowed)} | {_md(what)} |")
        out.append("")
    out += [
        "### Each model's own defaults",
        "",
        "The shape keys left unset take the model factory's own keyword defaults:",
        "",
        "| model | " + " | ".join(MODEL_SHAPE) + " |",
        "|---|" + "---|" * len(MODEL_SHAPE),
    ]
    from tricklab.models import MODELS

    for name in MODELS.names():
        m = load_config(overrides=[f"model.name={name}"]).model
        out.append(f"| `{name}` | " + " | ".join(f"`{_yaml(getattr(m, k))}`" for k in MODEL_SHAPE) + " |")
    for key in sorted(set(NOTES) - seen):
        log.warning("docs/hooks.py: NOTES describes %s, which the config schema does not have", key)
    out += ["", "### The defaults as YAML", "", "```yaml", default.to_yaml().rstrip(), "```", ""]
    return "\n".join(out)


# --- the doctor's verdicts ----------------------------------------------------------------------------------------

#: Why each threshold has its value, with the comparison with other tools: Markdown, left out of the site's pages
#: (mkdocs.yml's exclude_docs) and shown beside each verdict instead.
WHY_FILE = REPO / "docs" / "verdicts-why.md"
#: Where the reasons for the checks of the loop start in :data:`WHY_FILE`.
LOOP_WHY = "## The checks of the loop"

#: The first words of each verdict's paragraph under "Why these values" in :data:`WHY_FILE`.
WHY = {
    "vanishing_gradients": "Vanishing",
    "exploding_gradients": "Exploding",
    "saturation": "Saturation",
    "dead_relus": "Dead ReLUs",
    "badly_scaled_inputs": "Inputs",
    "lr_too_high": "LR",
    "oscillating_loss": "Oscillating",
    "slow_convergence": "Slow convergence",
    "loss_not_decreasing": "Loss not decreasing",
    "overfitting": "Overfitting",
}


def _rst_table(doc: str) -> dict[str, tuple[list[str], list[str]]]:
    """The docstring's simple table: verdict → (lines of its rule, lines of its thresholds)."""
    lines = doc.splitlines()
    borders = [i for i, line in enumerate(lines) if re.fullmatch(r"=+( +=+)+", line.strip())]
    if len(borders) < 3:
        raise ValueError("tricklab.diagnostics.verdicts: its docstring's table of verdicts is missing")
    spans = [m.span() for m in re.finditer(r"=+", lines[borders[0]])]
    rows: dict[str, tuple[list[str], list[str]]] = {}
    current = None
    for line in lines[borders[1] + 1 : borders[2]]:
        cells = [line[a : (spans[i + 1][0] if i + 1 < len(spans) else None)].strip() for i, (a, _) in enumerate(spans)]
        if cells[0]:
            current = cells[0].strip("`")
            rows[current] = ([], [])
        if current is not None:
            if cells[1]:
                rows[current][0].append(cells[1])
            if cells[2]:
                rows[current][1].append(cells[2])
    return rows


def _thresholds(lines: list[str], module, also=()) -> list[str]:
    """``EXPLODING_RATIO`` 1e3 → "`EXPLODING_RATIO` = 1000", checked against the constant in the code (of
    ``module``, or of a module in ``also`` when the docstring names it there)."""
    text = " ".join(lines)
    out = []
    for name, documented in re.findall(r"``([A-Z_]+)``\s*([0-9][0-9.e+-]*)?", text):
        owner = next((m for m in (module, *also) if hasattr(m, name)), None)
        if owner is None:
            raise ValueError(f"{module.__name__} docstring names {name}, which it does not define")
        module_of_name = owner
        value = getattr(module_of_name, name)
        if documented and float(documented) != float(value):
            raise ValueError(f"{module.__name__} docstring says {name} = {documented}, the code has {value!r}")
        out.append(f"`{name}` = {value:g}" if isinstance(value, float) else f"`{name}` = {value}")
    return out or [text]


def _reported_figures(check) -> list[str]:
    """The keys of the ``figures`` a check's verdict reports, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(check)))
    keys: list[str] = []

    def dict_keys(node):
        if isinstance(node, ast.Dict):
            keys.extend(k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))

    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "figures" for t in node.targets):
            dict_keys(node.value)
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "figures":
            if isinstance(node.slice, ast.Constant):
                keys.append(node.slice.value)
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr == "update" and getattr(f.value, "id", None) == "figures":
                dict_keys(node.args[0])
            if isinstance(f, ast.Name) and f.id == "Verdict" and len(node.args) >= 4:
                dict_keys(node.args[3])
    return list(dict.fromkeys(keys))


def _why(doc: str) -> dict[str, str]:
    """The bullets under "Why these values:" (of :data:`WHY_FILE`), keyed by their first words."""
    part = doc.split("Why these values:", 1)[1].split("\n\n", 2)[1]
    bullets = re.split(r"\n- ", "\n" + part.strip())
    return {b.strip(): " ".join(b.split()) for b in bullets if b.strip()}


def _without_pointer(text: str) -> str:
    """A docstring's text for the site, less the paragraph that points the code's reader to :data:`WHY_FILE`."""
    return "\n\n".join(p for p in text.split("\n\n") if WHY_FILE.name not in p)


def verdict_table() -> str:
    from tricklab.diagnostics import verdicts

    doc = inspect.getdoc(verdicts) or ""
    table = _rst_table(doc)
    reasons = WHY_FILE.read_text(encoding="utf-8").split(LOOP_WHY)[0]
    why = _why(reasons)
    missing = [name for name in verdicts.CHECKS.names() if name not in table]
    if missing:
        raise ValueError(f"the verdicts docstring's table lacks the check(s) {', '.join(missing)}")
    out = [
        "Generated from `tricklab.diagnostics.verdicts` when this site is built: the checks registered in `CHECKS`, "
        "in the order they run, each with its rule in short (the help `tricklab` prints), the thresholds of the "
        "module's docstring (each checked against the constant in the code), the figures its verdict reports, and "
        "the source the rule rests on. The full rules and the reasons for each threshold follow the table.",
        "",
        "| verdict | fires when | thresholds | figures reported | source |",
        "|---|---|---|---|---|",
    ]
    sections = []
    for name in verdicts.CHECKS.names():
        rule, thresholds = table[name]
        figures = _reported_figures(verdicts.CHECKS.get(name))
        short, _, source = verdicts.CHECKS.help(name).rpartition("; ")
        if not short:
            short, source = source, "—"
        out.append(
            f"| [`{name}`](#{name.replace('_', '-')}) | {_md(short)} | "
            f"{'<br>'.join(_thresholds(thresholds, verdicts))} | {', '.join(f'`{k}`' for k in figures) or '—'} | "
            f"{_md(source)} |"
        )
        prefix = WHY.get(name)
        reason = next((text for head, text in why.items() if prefix and head.startswith(prefix)), None)
        sections += [f"### `{name}` {{#{name.replace('_', '-')}}}", "", f"**Rule.** {' '.join(rule)}", ""]
        sections += [f"**Threshold.** {'; '.join(_thresholds(thresholds, verdicts))}.", ""]
        if figures:
            shown = ", ".join(f"`{k}`" for k in figures)
            sections += [f"**Evidence.** `Verdict.figures` holds {shown}, beside the layers it names.", ""]
        if reason:
            sections += [f"**Why this value.** {reason}", ""]
        elif name != verdicts.NONFINITE:
            log.warning("verdicts: no paragraph under 'Why these values' for %s", name)
        check_doc = inspect.getdoc(verdicts.CHECKS.get(name))
        if check_doc:
            sections += [" ".join(check_doc.split()), ""]
    intro = doc.split("\n\n", 1)[1]
    intro = intro[: intro.index("=====")].strip()
    after = doc.split("=" * 20)[-1]
    after = _without_pointer(after[after.index("\n") :].strip())
    compared = "Where these rules differ" + reasons.split("Where these rules differ", 1)[1]
    return rst_to_markdown(
        "\n".join([*out, "", intro, "", after, "", "## Each verdict", "", *sections, "## Compared with other tools",
                   "", compared])
    )


def loop_bug_table() -> str:
    """The loop checks of ``tricklab.diagnostics.loop_bugs`` (registered in ``LOOP_CHECKS``), from that module's
    docstring table in the same way as :func:`verdict_table`; a check missing from the table fails the build."""
    from tricklab.diagnostics import loop_bugs, verdicts

    doc = inspect.getdoc(loop_bugs) or ""
    table = _rst_table(doc)
    missing = [name for name in loop_bugs.LOOP_CHECKS.names() if name not in table]
    if missing:
        raise ValueError(f"the loop_bugs docstring's table lacks the check(s) {', '.join(missing)}")
    out = [
        "Generated from `tricklab.diagnostics.loop_bugs` when this site is built: the loop checks registered in "
        "`LOOP_CHECKS`, each with its rule and the thresholds of the module's docstring (each checked against the "
        "constant in the code).",
        "",
        "| verdict | what is wrong | fires when | thresholds |",
        "|---|---|---|---|",
    ]
    for name in loop_bugs.LOOP_CHECKS.names():
        rule, thresholds = table[name]
        out.append(
            f"| `{name}` | {_md(loop_bugs.LOOP_CHECKS.help(name))} | {_md(' '.join(rule))} | "
            f"{'<br>'.join(_thresholds(thresholds, loop_bugs, also=(verdicts,)))} |"
        )
    after = doc.split("=" * 20)[-1]
    after = _without_pointer(after[after.index("\n") :].strip())
    reasons = WHY_FILE.read_text(encoding="utf-8").split(LOOP_WHY, 1)[1].strip()
    return rst_to_markdown("\n".join([*out, "", after, "", reasons]))


# --- the API reference and the names ------------------------------------------------------------------------------

#: Headings of the API page; a public name not listed here still appears, under "Other names".
API_GROUPS = {
    "The command line's verbs": ["train", "doctor", "lab", "report", "lr_find"],
    "Models in and out": ["create_model", "load_run", "load_weights"],
    "The earlier names, and the loop": ["run", "run_lab", "diagnose", "fit", "evaluate"],
    "The doctor around your own loop, and pre-flight checks": ["Doctor", "preflight"],
    "Results": ["RunResult", "LabResult", "DoctorResult", "PreflightResult"],
    "Configs": ["Config", "load_config", "as_config", "assemble"],
    "Plugins: your own models, datasets and callbacks": [
        "register_model", "register_dataset", "register_callback", "model", "dataset", "callback", "allow_modules",
    ],
    "Callbacks for fit()": ["Callback", "FitState"],
    "Registered names": ["list_names"],
    "Errors": [
        "TrickLabError", "ConfigError", "DataError", "UnknownNameError", "NonFiniteError", "DivergedError",
        "CheckpointError", "Interrupted", "FolderInUse", "OutputError", "StoreError", "LabInterrupted",
    ],
}


def api_reference() -> str:
    import tricklab

    exports = tricklab._EXPORTS
    grouped = [n for names in API_GROUPS.values() for n in names]
    groups = dict(API_GROUPS)
    other = [n for n in tricklab.__all__ if n not in grouped]
    if other:
        groups["Other names"] = other
    out = []
    for heading, names in groups.items():
        out += [f"## {heading}", ""]
        for name in names:
            if name not in exports:
                log.warning("api: %s is listed in docs/hooks.py but is not a public name of tricklab", name)
                continue
            out += [f"::: {exports[name]}.{name}", "    options:", "      heading_level: 3", ""]
    return "\n".join(out)


def registered_names() -> str:
    from tricklab.catalog import family, list_names

    out = []
    for fam in list_names():
        registry = family(fam)
        out += [f"### {fam}", "", "| name | what |", "|---|---|"]
        out += [f"| `{n}` | {_md(' '.join(registry.help(n).split()))} |" for n in registry.names()]
        out.append("")
    return "\n".join(out)


GENERATORS = {
    "config-reference": config_reference,
    "verdicts": verdict_table,
    "api": api_reference,
    "names": registered_names,
}


def callback_order() -> str:
    """The ``ORDER_*`` constants of ``tricklab.events``, in ascending order, each with the ``#:`` comment above it."""
    from tricklab import events

    lines = inspect.getsource(events).splitlines()
    rows = []
    for i, line in enumerate(lines):
        found = re.match(r"(ORDER_[A-Z0-9_]+) = ", line)
        if not found:
            continue
        comment, j = [], i - 1
        while j >= 0 and lines[j].startswith("#:"):
            comment.insert(0, lines[j][2:].strip())
            j -= 1
        name = found.group(1)
        rows.append((getattr(events, name), name, " ".join(comment)))
    out = ["| order | constant | why there |", "|--:|---|---|"]
    out += [f"| {value} | `{name}` | {_md(why)} |" for value, name, why in sorted(rows, key=lambda r: r[0])]
    return "\n".join(out)


GENERATORS["callback-order"] = callback_order
GENERATORS["loop-bugs"] = loop_bug_table
