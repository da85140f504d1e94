#!/usr/bin/env python3
"""The docs check catches what it is for: each case is a small repository
in a temporary directory that breaks one rule, and one that keeps it.
Run by `make test-docs` before the check itself (stdlib only)."""

import pathlib
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import check_docs  # noqa: E402

REPO = check_docs.ROOT


class Repo:
    """A scratch repository holding the files the allow-list points at."""

    def __init__(self):
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="client-ip-docs-"))
        for name in {file for _, file, _ in check_docs.TESTED_COMMANDS}:
            (self.root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / name, self.root / name)
        (self.root / "docs").mkdir(exist_ok=True)
        self.write("README.md", "# client-ip\n")

    def write(self, name, text):
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def problems(self):
        saved = check_docs.ROOT
        check_docs.ROOT = self.root
        try:
            found = []
            for path in check_docs.doc_files():
                check_docs.check_blocks(path, found)
                check_docs.check_links(path, found)
            check_docs.check_tested_commands(found)
            return found
        finally:
            check_docs.ROOT = saved

    def close(self):
        shutil.rmtree(self.root, ignore_errors=True)


class CheckDocs(unittest.TestCase):
    def setUp(self):
        self.repo = Repo()

    def tearDown(self):
        self.repo.close()

    def assert_one(self, text):
        problems = self.repo.problems()
        self.assertEqual(len(problems), 1, problems)
        self.assertIn(text, problems[0])

    def assert_none(self):
        self.assertEqual(self.repo.problems(), [])

    def test_a_fence_without_a_language(self):
        self.repo.write("docs/a.md", "# A\n\n```\nkubectl get pods\n```\n")
        self.assert_one("without a language")

    def test_a_command_no_test_runs(self):
        self.repo.write("docs/a.md", "# A\n\n```console\n$ kubectl get pods\nNAME\n```\n")
        self.assert_one("`kubectl get pods` is run by no test")

    def test_a_command_in_a_sh_block_no_test_runs(self):
        self.repo.write("docs/a.md", "# A\n\n```sh\nmake test\nmake bench   # timings\n```\n")
        self.assert_one("`make bench` is run by no test")

    def test_commands_the_tests_run(self):
        self.repo.write("docs/a.md", "# A\n\n```sh\nmake run     # the demo\nmake test\n```\n")
        self.assert_none()

    def test_an_allow_list_entry_whose_test_no_longer_runs_it(self):
        makefile = self.repo.root / "Makefile"
        makefile.write_text(makefile.read_text().replace("push: image", "push:"))
        self.repo.write("docs/a.md", "# A\n\n```sh\nmake image\n```\n")
        problems = self.repo.problems()
        self.assertTrue(any("`make image` is run by no test" in p for p in problems), problems)
        self.assertTrue(any("no longer holds 'push: image'" in p for p in problems), problems)

    def test_not_run_needs_a_reason(self):
        self.repo.write("docs/a.md", "# A\n\n<!-- not-run: -->\n```console\n$ kubectl get pods\n```\n")
        self.assert_one("not-run needs a reason")
        self.repo.write("docs/a.md", "# A\n\n<!-- not-run: a cluster -->\n```console\n$ kubectl get pods\n```\n")
        self.assert_none()

    def test_run_by_a_test_that_does_not_read_the_doc(self):
        self.repo.write("envoy-test/tests/t.rs", "// runs nothing\n")
        self.repo.write("docs/a.md", "# A\n\n<!-- run-by: envoy-test/tests/t.rs -->\n```console\n$ curl x\n```\n")
        self.assert_one("which does not read docs/a.md")
        self.repo.write("envoy-test/tests/t.rs", '// runs "docs/a.md"\n')
        self.assert_none()

    def test_run_by_on_the_output_a_test_reads(self):
        self.repo.write("envoy-test/tests/t.rs", '// reads "docs/a.md"\n')
        self.repo.write("docs/a.md", '# A\n\n<!-- run-by: envoy-test/tests/t.rs -->\n```json\n{"a":1}\n```\n')
        self.assert_none()
        self.repo.write("docs/a.md", '# A\n\n<!-- not-run: why -->\n```json\n{"a":1}\n```\n')
        self.assert_one("a not-run marker on a ```json block")

    def test_run_by_a_missing_test(self):
        self.repo.write("docs/a.md", "# A\n\n<!-- run-by: envoy-test/tests/gone.rs -->\n```console\n$ curl x\n```\n")
        self.assert_one("which does not exist")

    def test_links_to_files_and_anchors(self):
        self.repo.write("docs/b.md", "# B\n\n## Two words: here\n\n## Same\n\n## Same\n")
        self.repo.write(
            "docs/a.md",
            "# A\n\n[b](b.md) [two](b.md#two-words-here) [again](b.md#same-1) [up](../README.md) "
            "[self](#a) [web](https://istio.io/) `[not a link](gone.md)`\n",
        )
        self.assert_none()

    def test_a_link_to_a_missing_file(self):
        self.repo.write("docs/a.md", "# A\n\nSee [gone](gone.md).\n")
        self.assert_one("docs/gone.md does not exist")

    def test_a_link_to_a_missing_anchor(self):
        self.repo.write("docs/b.md", "# B\n")
        self.repo.write("docs/a.md", "# A\n\nSee [b](b.md#nowhere).\n")
        self.assert_one("has no heading #nowhere")

    def test_a_link_inside_a_code_block_is_no_link(self):
        self.repo.write("docs/a.md", "# A\n\n```text\n[gone](gone.md)\n```\n")
        self.assert_none()

    def test_pending_files_count_as_existing(self):
        for pending in sorted(check_docs.PENDING_FILES):
            self.repo.write("docs/a.md", f"# A\n\n[later](../{pending})\n")
            self.assert_none()

    def test_same_as_a_manifest(self):
        self.repo.write("m.yaml", "# about it\nkind: WasmPlugin\nspec:\n  url: oci://x\n")
        self.repo.write(
            "docs/a.md",
            "# A\n\n<!-- same-as: m.yaml -->\n```yaml\nkind: WasmPlugin\nspec:\n  url: oci://x\n  # sha256: pin it\n```\n",
        )
        self.assert_none()
        self.repo.write("m.yaml", "kind: WasmPlugin\nspec:\n  url: oci://y\n")
        self.assert_one("differs from m.yaml")


class ConfigTables(unittest.TestCase):
    def setUp(self):
        self.repo = Repo()
        self.repo.write("src/config.rs", "struct RawFilterConfig {\n    #[serde(default)]\n    xff_mode: XffMode,\n    trusted_hops: u32,\n}\n")

    def tearDown(self):
        self.repo.close()

    def problems(self):
        saved = check_docs.ROOT
        check_docs.ROOT = self.repo.root
        try:
            found = []
            check_docs.check_config_tables(found)
            return found
        finally:
            check_docs.ROOT = saved

    def table(self, *fields):
        return "# T\n\n| field | meaning |\n|---|---|\n" + "".join(f"| `{f}` | x |\n" for f in fields)

    def test_every_field_in_both_tables(self):
        self.repo.write("README.md", self.table("xff_mode", "trusted_hops"))
        self.repo.write("docs/configuration.md", self.table("trusted_hops", "xff_mode"))
        self.assertEqual(self.problems(), [])

    def test_a_field_missing_or_unknown(self):
        self.repo.write("README.md", self.table("xff_mode"))
        self.repo.write("docs/configuration.md", self.table("xff_mode", "trusted_hops", "trusted_hop"))
        self.assertEqual(
            self.problems(),
            [
                "README.md: the configuration table lacks `trusted_hops`, which src/config.rs takes",
                "docs/configuration.md: the configuration table has `trusted_hop`, which src/config.rs does not take",
            ],
        )


class TheRepository(unittest.TestCase):
    def test_its_docs_pass(self):
        self.assertEqual(check_docs.main(), 0)

    def test_the_pending_files_are_docs(self):
        for pending in check_docs.PENDING_FILES:
            self.assertTrue(pending.startswith("docs/") and pending.endswith(".md"), pending)


if __name__ == "__main__":
    unittest.main()
