"""A griffe extension for the API reference: tricklab's docstrings use two reStructuredText habits that Markdown
would show raw, and this turns them into their Markdown equivalent before mkdocstrings renders them.

- Sphinx roles, ``:class:`~tricklab.runner.RunResult``` → `` `RunResult` `` (``~`` keeps the last name, as
  Sphinx shows it; without it the whole path);
- a paragraph ending in ``::`` that introduces an indented literal block → the paragraph ends in ``:`` and the
  block becomes a fenced Python code block.

The docstrings stay as they are in the source (they also read well in ``help()`` and in an editor).
"""

from __future__ import annotations

import re
import textwrap

from griffe import Extension

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")


def _role(found: re.Match) -> str:
    tilde, target = found.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def rst_to_markdown(text: str) -> str:
    text = ROLE.sub(_role, text)
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and i + 1 < len(lines) and not lines[i + 1].strip():
            base = len(line) - len(line.lstrip())
            j = i + 2
            block: list[str] = []
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > base):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
                j -= 1
            if block:
                head = line.rstrip()[:-2].rstrip()
                indent = " " * base
                if head.strip():
                    out += [head + ":", ""]
                out += [f"{indent}```python", *(indent + b for b in textwrap.dedent("\n".join(block)).splitlines())]
                out.append(f"{indent}```")
                i = j
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


class RstToMarkdown(Extension):
    def on_object(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
