#!/usr/bin/env python3
"""`make test-docs`: the docs cannot drift from what the tests run.

For README.md and every docs/*.md:

- Every fenced block says what it holds (```console, ```sh, ```yaml, ```json,
  ```text...): a bare ``` fence is an error, so no command hides in one.
- Every shell block (console, sh, shell, bash) is one of:
  - run by a test, named in a comment on the line before the fence,
    `<!-- run-by: PATH -->`: PATH must exist and name this doc, since the
    test there reads the doc's blocks and runs them (envoy-test/tests/mesh.rs
    runs every such block of docs/local-mesh.md against the mesh of
    `make run`, in order, and compares what each command prints; a run-by
    ```json block there holds access-log lines the mesh must print);
  - made of commands the tests execute, each matching an entry of
    TESTED_COMMANDS below, whose evidence must be found in the file named
    there (so the list cannot outlive the test it points at);
  - marked `<!-- not-run: REASON -->`, with a reason (a cluster, a
    registry with credentials, Docker).
- A block marked `<!-- same-as: PATH -->` holds the file PATH, comments and
  blank lines aside (the README's minimal deploy is wasmplugin/sidecar.yaml).
- The configuration tables of README.md and docs/configuration.md name
  every field src/config.rs parses, and no other.
- Every relative link and image in those files points at a file of the
  repository, and every `#anchor` at a heading of its target (GitHub's
  slugs). PENDING_FILES are treated as existing while absent.

Exit status 1, with one line per problem, when anything fails.
"""

import pathlib
import re
import sys
import unicodedata

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Docs written elsewhere and merged into docs/ later. A link to one of them
# counts as resolved while the file is absent (its anchors cannot be checked
# until it exists). Remove each entry once its file is in docs/.
PENDING_FILES: set[str] = set()

SHELL_LANGUAGES = {"console", "sh", "shell", "bash"}

# The docs with a table of every plugin configuration field.
CONFIG_TABLES = ["README.md", "docs/configuration.md"]

# Commands a doc may show without a run-by or not-run marker, because a test
# runs them: (pattern the whole command must match, file that runs it,
# evidence that must occur in that file).
TESTED_COMMANDS = [
    # .ci/run runs `make test` on a clean clone; make test builds the module
    # (test-envoy depends on it) and runs test-docs, this check.
    (r"make test", ".ci/run", "make test"),
    (r"make build", "Makefile", "test-envoy: $(MODULE)"),
    (r"make test-docs", "Makefile", "test: lint test-unit test-wasm test-envoy test-manifests test-fuzz test-docs"),
    # `make run` is envoy-test/mesh.sh, which tests/mesh.rs starts as
    # `make run` starts it, and stops with Ctrl-C.
    (r"make run", "envoy-test/tests/mesh.rs", 'repo_root().join("envoy-test/mesh.sh")'),
    (r"make run", "Makefile", "envoy-test/mesh.sh"),
    # tests/image.rs runs `make push` into a real registry and reads the
    # digest it prints; make push runs make image.
    (r"make push IMAGE=\S+", "envoy-test/tests/image.rs", '"push",'),
    (r"make push IMAGE=\S+", "envoy-test/tests/image.rs", 'strip_prefix("manifest digest: ")'),
    (r"make image", "Makefile", "push: image"),
    # Each of these is part of `make test`.
    (r"make lint", "Makefile", "test: lint "),
    (r"make test-unit", "Makefile", " test-unit "),
    (r"make test-wasm", "Makefile", " test-wasm "),
    (r"make test-envoy", "Makefile", " test-envoy "),
    (r"make test-manifests", "Makefile", " test-manifests "),
    (r"make test-fuzz", "Makefile", " test-fuzz"),
    # make test-fuzz is `make fuzz FUZZ_SECONDS=10`; make test runs the soak
    # short (tests/soak.rs), make soak the same test longer.
    (r"make fuzz", "Makefile", "$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=10"),
    (r"make soak", "envoy-test/tests/soak.rs", "SOAK_REQUESTS"),
    # make certs is mesh-pki.sh, which tests/mesh.rs runs.
    (r"make certs", "envoy-test/tests/mesh.rs", 'repo_root().join("envoy-test/mesh-pki.sh")'),
    (r"make build certs", "envoy-test/tests/mesh.rs", 'repo_root().join("envoy-test/mesh-pki.sh")'),
]
# `make bench` is deliberately absent: timings belong to it alone, and no test
# runs it. Docs show it in a not-run block.

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
MARKER = re.compile(r"^\s*<!--\s*(run-by|not-run|same-as)\s*:\s*(.*?)\s*-->\s*$")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\".*\")?\s*$")
INLINE_CODE = re.compile(r"(`+)(?:.*?)\1")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def doc_files():
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def rel(path):
    return path.relative_to(ROOT).as_posix()


def blocks(text):
    """(first line number, info string, marker, body lines) of each fenced block."""
    lines = text.split("\n")
    found = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.groups()
        marker = None
        j = i - 1
        while j >= 0 and lines[j].strip() == "":
            j -= 1
        if j >= 0:
            mm = MARKER.match(lines[j])
            if mm:
                marker = (mm.group(1), mm.group(2))
        body = []
        k = i + 1
        while k < len(lines):
            close = FENCE.match(lines[k])
            if close and close.group(2)[0] == fence[0] and len(close.group(2)) >= len(fence) and not close.group(3).strip():
                break
            body.append(lines[k][len(indent):] if lines[k].startswith(indent) else lines[k].lstrip())
            k += 1
        found.append((i + 1, info.strip(), marker, body))
        i = k + 1
    return found


def prose_lines(text, keep_code=False):
    """(line number, line) outside fenced blocks, inline code blanked
    unless keep_code."""
    fence = None
    for number, line in enumerate(text.split("\n"), 1):
        m = FENCE.match(line)
        if m:
            if fence is None:
                fence = m.group(2)
            elif m.group(2)[0] == fence[0] and len(m.group(2)) >= len(fence) and not m.group(3).strip():
                fence = None
            continue
        if fence is None:
            yield number, line if keep_code else INLINE_CODE.sub(lambda c: " " * len(c.group(0)), line)


def commands(language, body):
    """The commands of a shell block: `$ ` lines of a console block (with
    their `\\` continuations), every line of a script that is not a comment."""
    found = []
    continued = False
    for line in body:
        if language == "console":
            if line.startswith("$ "):
                found.append(line[2:])
            elif continued:
                found[-1] += "\n" + line
            else:
                continue
        else:
            stripped = line.strip()
            if continued:
                found[-1] += "\n" + line
            elif stripped and not stripped.startswith("#"):
                found.append(stripped)
            else:
                continue
        continued = line.rstrip().endswith("\\")
    # `make run     # the local mesh demo`: the comment is not the command.
    return [re.sub(r"\s+#\s.*$", "", c).strip() for c in found]


def slug(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r"<[^>]+>", "", heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = text.replace("`", "")
    text = text.lower()
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if char in " -_" or category[0] in "LN" or category == "Mn" or category == "Pc":
            kept.append(char)
    return "".join(kept).replace(" ", "-")


def anchors(path):
    text = path.read_text()
    seen = {}
    found = set()
    for _, line in prose_lines(text):
        found.update(HTML_ANCHOR.findall(line))
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def check_blocks(path, problems):
    for line, info, marker, body in blocks(path.read_text()):
        where = f"{rel(path)}:{line}"
        language = info.split()[0] if info else ""
        if not language:
            problems.append(f"{where}: a fenced block without a language; say what it holds (console, sh, yaml, json, text...)")
            continue
        if marker and marker[0] == "same-as":
            check_same_as(where, marker[1], body, problems)
            continue
        # run-by on any block: a test reads it (commands to run, or the log
        # lines they print).
        if marker and marker[0] == "run-by":
            test = ROOT / marker[1]
            if not test.is_file():
                problems.append(f"{where}: run-by names {marker[1]}, which does not exist")
            elif rel(path) not in test.read_text():
                problems.append(f"{where}: run-by names {marker[1]}, which does not read {rel(path)}")
            continue
        if language not in SHELL_LANGUAGES:
            if marker:
                problems.append(f"{where}: a {marker[0]} marker on a ```{language} block, which holds no commands")
            continue
        if marker and marker[0] == "not-run":
            if not marker[1]:
                problems.append(f"{where}: not-run needs a reason: <!-- not-run: why no test runs this -->")
            continue
        shown = commands(language, body)
        if not shown:
            problems.append(f"{where}: a ```{language} block with no command in it")
        for command in shown:
            if not tested(command):
                problems.append(
                    f"{where}: `{command}` is run by no test: run it in one (and list it in "
                    f"envoy-test/check_docs.py), or mark the block <!-- not-run: reason -->"
                )


def significant(lines):
    """A manifest's lines without comments, blank lines and trailing space."""
    return [line.rstrip() for line in lines if line.strip() and not line.strip().startswith("#")]


def check_same_as(where, name, body, problems):
    """A block shown as a file of the repository holds that file, comments
    aside (a doc may comment a line the file leaves out, such as sha256:)."""
    source = ROOT / name
    if not source.is_file():
        problems.append(f"{where}: same-as names {name}, which does not exist")
        return
    shown, actual = significant(body), significant(source.read_text().split("\n"))
    if shown != actual:
        for number, (a, b) in enumerate(zip(shown + [None] * len(actual), actual + [None] * len(shown))):
            if a != b:
                problems.append(f"{where}: the block differs from {name} (comments aside) at its line {number + 1}: {a!r}, the file has {b!r}")
                break


def tested(command):
    entries = [(file, evidence) for pattern, file, evidence in TESTED_COMMANDS if re.fullmatch(pattern, command)]
    return bool(entries) and all(
        (ROOT / file).is_file() and evidence in (ROOT / file).read_text() for file, evidence in entries
    )


def check_tested_commands(problems):
    """Every allow-list entry's evidence is where it says, so a test that stops
    running a command fails this check, not only the doc that shows it."""
    for pattern, file, evidence in TESTED_COMMANDS:
        target = ROOT / file
        if not target.is_file():
            problems.append(f"envoy-test/check_docs.py: `{pattern}` points at {file}, which does not exist")
        elif evidence not in target.read_text():
            problems.append(f"envoy-test/check_docs.py: `{pattern}`: {file} no longer holds {evidence!r}")


def config_fields():
    """The plugin configuration's fields, as src/config.rs parses them."""
    source = (ROOT / "src/config.rs").read_text()
    m = re.search(r"struct RawFilterConfig \{(.*?)\n\}", source, re.S)
    return set(re.findall(r"^\s+([a-z_][a-z0-9_]*):", m.group(1), re.M)) if m else set()


def table_fields(path):
    """The first column of the tables whose header starts `| field |`."""
    fields, in_table = set(), False
    for _, line in prose_lines(path.read_text(), keep_code=True):
        if line.startswith("| field |"):
            in_table = True
        elif in_table and line.startswith("|"):
            m = re.match(r"^\|\s*([a-z_][a-z0-9_]*)\s*\|", line.replace("`", " "))
            if m:
                fields.add(m.group(1))
        else:
            in_table = False
    return fields


def check_config_tables(problems):
    """The README's table and the reference name every field the parser
    takes, and no other."""
    parsed = config_fields()
    if not parsed:
        problems.append("src/config.rs: no struct RawFilterConfig to read the fields from")
        return
    for name in CONFIG_TABLES:
        shown = table_fields(ROOT / name)
        for field in sorted(parsed - shown):
            problems.append(f"{name}: the configuration table lacks `{field}`, which src/config.rs takes")
        for field in sorted(shown - parsed):
            problems.append(f"{name}: the configuration table has `{field}`, which src/config.rs does not take")


def check_links(path, problems):
    text = path.read_text()
    for number, line in prose_lines(text):
        targets = INLINE_LINK.findall(line)
        m = REFERENCE_DEF.match(line)
        if m:
            targets.append(m.group(1))
        for target in targets:
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
                continue  # https:, mailto:, ...
            where = f"{rel(path)}:{number}"
            file_part, _, anchor = target.partition("#")
            if file_part:
                resolved = (path.parent / file_part).resolve()
                try:
                    name = rel(resolved)
                except ValueError:
                    problems.append(f"{where}: {target} points outside the repository")
                    continue
            else:
                resolved, name = path, rel(path)
            if not resolved.exists():
                if name in PENDING_FILES:
                    continue
                problems.append(f"{where}: {target}: {name} does not exist")
                continue
            if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{where}: {target}: {name} has no heading #{anchor}")


def main():
    problems = []
    for path in doc_files():
        check_blocks(path, problems)
        check_links(path, problems)
    check_tested_commands(problems)
    check_config_tables(problems)
    for problem in problems:
        print(problem)
    files = len(doc_files())
    if problems:
        print(f"test-docs: {len(problems)} problem(s) in {files} files", file=sys.stderr)
        return 1
    print(f"test-docs: {files} files, every shell block run by a test or marked not-run, every field in the tables, every link resolving")
    return 0


if __name__ == "__main__":
    sys.exit(main())
