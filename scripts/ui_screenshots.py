"""Screenshots of the Dagster UI after a demo run, and checks of what they should show.

    .venv/bin/python scripts/ui_screenshots.py [--home .trajhub] [--demo] [--out DIR]

Starts `dagster dev -w workspace.yaml` on the demo's instance ($TRAJHUB_HOME/dagster) on a free
port, reads the latest materializations of every asset through the webserver's GraphQL API, and
takes headless-Chromium screenshots (Debian's `chromium`, driven over the DevTools protocol) of the
asset graph, each asset's page at the partitions it checks, and the runs list. Then it checks what
those pages should show against the store:

- each partition's materialization carries that partition's runs, calls, conversations, rule hits
  and pairs (batch totals are named `batch_*`), so partitions differ where the store does;
- no run id sits unescaped in a Markdown entry (`a~b~0~c` renders as strikethrough);
- rule_rewards names each rule it hit, trajectory_rewards gives reward mean/min/max, the pairs preview
  shows prompt, chosen and rejected text or says why an instance has none;
- the leaderboard table defines ISR and CSR and each plot is its own entry;
- hf_dataset_release carries the release card (its README.md).

Exit code 0 when every check passes, 1 with the failures listed. dagster dev and chromium are
stopped on exit, also on errors. `--demo` runs scripts/demo.sh first (with the same home).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path

try:
    import websocket  # websocket-client: the test extra (scripts/setup_venv.sh test)
except ModuleNotFoundError:
    sys.exit("ui_screenshots.py: needs websocket-client; run scripts/setup_venv.sh test")

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = re.compile(r"[A-Za-z0-9._:@+-]+~[A-Za-z0-9._:@+-]+~\d+~[0-9a-f]{8}")

MATERIALIZATIONS = """
query Materializations($key: AssetKeyInput!, $partitions: [String!], $limit: Int) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(partitions: $partitions, limit: $limit) {
        partition runId timestamp
        metadataEntries {
          __typename label
          ... on MarkdownMetadataEntry { mdStr }
          ... on TextMetadataEntry { text }
          ... on IntMetadataEntry { intRepr }
          ... on FloatMetadataEntry { floatValue }
          ... on BoolMetadataEntry { boolValue }
          ... on PathMetadataEntry { path }
          ... on JsonMetadataEntry { jsonString }
          ... on TableMetadataEntry { table { records schema { columns { name } } } }
        }
      }
    }
  }
}"""
ASSETS = "{ assetNodes { assetKey { path } isPartitioned } }"
RUNS = "{ runsOrError(limit: 30) { ... on Runs { results { runId jobName status tags { key value } } } } }"
LOCATIONS = """{ workspaceOrError { ... on Workspace { locationEntries { name
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""

# Markdown entries the UI hides behind "[Show Markdown]": opened for their own screenshots.
OPENED_ENTRIES = {"hf_dataset_release": ("card",), "leaderboard": ("plot_reward_distribution",)}
# Per-partition metadata that must equal the store: (asset, label, SQL over the partition).
PARTITION_COUNTS = [
    ("raw_trajectories", "runs", "SELECT count(*) FROM runs WHERE {where}"),
    ("raw_trajectories", "calls", "SELECT count(*) FROM raw_calls WHERE {where}"),
    ("merged_trajectories", "conversations", "SELECT count(*) FROM merged_trajectories WHERE {where}"),
    ("rule_rewards", "rule_hits", "SELECT count(*) FROM rule_steps WHERE {where}"),
    ("trajectory_rewards", "runs", "SELECT count(*) FROM trajectory_rewards WHERE {where}"),
    ("preference_pairs", "pairs", "SELECT count(*) FROM preference_pairs WHERE {where}"),
]


# -- processes -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def process_group(command: list[str], log: Path, env: dict | None = None):
    """A child in its own session, so stopping it stops everything it started."""
    with open(log, "wb") as out:
        child = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
    try:
        yield child
    finally:
        for sig, wait in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):  # dagster dev stops its children on SIGINT
            if child.poll() is not None:
                break
            try:
                os.killpg(child.pid, sig)
                child.wait(wait)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(child.pid, signal.SIGKILL)  # whatever of the group outlived its leader
        except ProcessLookupError:
            pass


def wait_for(what: str, ready, timeout: float, child: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit(f"{what}: exited with {child.returncode}; see {log}")
        try:
            if (value := ready()) is not None:
                return value
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"{what}: not ready after {timeout:.0f}s; see {log}")


class Dagster:
    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}"

    def graphql(self, query: str, **variables) -> dict:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.load(response)
        if answer.get("errors"):
            raise RuntimeError(f"GraphQL errors: {answer['errors']}")
        return answer["data"]

    def location_loaded(self):
        entries = self.graphql(LOCATIONS)["workspaceOrError"].get("locationEntries") or []
        loaded = [e for e in entries if e["locationOrLoadError"]]
        for entry in loaded:
            if entry["locationOrLoadError"]["__typename"] == "PythonError":
                raise SystemExit(
                    f"code location {entry['name']} failed to load: {entry['locationOrLoadError']['message']}"
                )
        return True if loaded else None

    def materializations(self, asset: str, partitions: list[str] | None = None, limit: int = 200) -> list[dict]:
        data = self.graphql(MATERIALIZATIONS, key={"path": [asset]}, partitions=partitions, limit=limit)
        return data["assetOrError"].get("assetMaterializations") or []


# -- chromium --------------------------------------------------------------------------------
class Chromium:
    """One headless tab over the DevTools protocol: navigate, wait for text, screenshot."""

    def __init__(self, port: int):
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(p for p in pages if p["type"] == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:  # events arrive in between; skip them
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def press_alt(self, key: str) -> None:
        for kind in ("keyDown", "keyUp"):
            self.call(
                "Input.dispatchKeyEvent",
                type=kind,
                modifiers=1,
                key=key,
                code=f"Key{key.upper()}",
                windowsVirtualKeyCode=ord(key.upper()),
            )

    def shoot(
        self,
        url: str,
        path: Path,
        expect: list[str],
        expand_groups: bool = False,
        also_scrolled: bool = False,
        open_entries: tuple[str, ...] = (),
        timeout: float = 60,
    ) -> list[str]:
        """Screenshot `url` once every text in `expect` shows and no spinner does; returns the
        texts that never showed. `expand_groups`: press Alt+E (the asset graph's "Expand all
        groups") once the graph is drawn. `also_scrolled`: a second screenshot, `<name>-end.png`,
        with every scrolling panel at its end (the last metadata entries). `open_entries`: metadata
        labels whose "[Show Markdown]" dialog to open, each its own `<name>-<label>.png`."""
        self.call("Emulation.setDeviceMetricsOverride", width=1600, height=1300, deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", url=url)
        deadline, missing = time.monotonic() + timeout, expect
        while time.monotonic() < deadline:
            time.sleep(1)
            # A first visit opens "Join the Dagster community" over the page.
            self.evaluate("[...document.querySelectorAll('button')].find(b => b.innerText.trim() == 'Skip')?.click()")
            if expand_groups and self.evaluate("!!document.querySelector('svg')"):
                time.sleep(1)
                self.press_alt("e")
                expand_groups = False
                continue
            missing = [e for e in expect if e not in self.text()]
            spinning = self.evaluate(
                "!!document.querySelector('[role=progressbar], [class*=Spinner], [class*=spinner]')"
            )
            if not missing and not spinning:
                break
        time.sleep(2)  # let the last render and any fade-in settle
        self.capture(path)
        for label in open_entries:
            opened = self.evaluate(  # the entry's row: its label cell, then the value cell's link
                f"(() => {{ const row = [...document.querySelectorAll('tr')].find(r => r.cells[0]?.innerText.trim() == "
                f"{json.dumps(label)}); const link = row && [...row.querySelectorAll('*')].find(e => "
                f"e.children.length == 0 && e.innerText.trim() == '[Show Markdown]'); link?.click(); "
                "return !!link; })()"
            )
            if not opened:
                missing = [*missing, f"[Show Markdown] of {label}"]
                continue
            time.sleep(3)
            self.capture(path.with_name(f"{path.stem}-{label}.png"))
            for kind in ("keyDown", "keyUp"):  # Escape closes the dialog
                self.call("Input.dispatchKeyEvent", type=kind, key="Escape", code="Escape", windowsVirtualKeyCode=27)
            time.sleep(1)
        if also_scrolled:
            self.evaluate(
                "document.querySelectorAll('*').forEach(e => "
                "{ if (e.scrollHeight > e.clientHeight + 20) e.scrollTop = e.scrollHeight; })"
            )
            time.sleep(1)
            self.capture(path.with_name(f"{path.stem}-end.png"))
        return missing

    def capture(self, path: Path) -> None:
        shot = self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))


# -- what the pages should show --------------------------------------------------------------
def entries(materialization: dict) -> dict[str, dict]:
    return {e["label"]: e for e in materialization["metadataEntries"]}


def entry_text(entry: dict) -> str:
    """The text an entry shows: Markdown, text, a number, a path or a table's cells."""
    if entry["__typename"] == "TableMetadataEntry":
        return json.dumps(entry["table"])
    for field in ("mdStr", "text", "intRepr", "floatValue", "boolValue", "path", "jsonString"):
        if field in entry and entry[field] is not None:
            return str(entry[field])
    return ""


def all_text(materialization: dict) -> str:
    return "\n".join(f"{e['label']}: {entry_text(e)}" for e in materialization["metadataEntries"])


def unescaped_run_ids(markdown: str) -> list[str]:
    without_code = re.sub(r"`[^`]*`", "", markdown)  # code spans render as text
    return RUN_ID.findall(without_code)


def partition_where(asset_partitioned_by_instance: bool, key: str, dimensions: dict) -> tuple[str, list]:
    if asset_partitioned_by_instance:
        return "instance = ?", [key]
    return "model = ? AND instance = ?", [dimensions["model"], dimensions["instance"]]


def pick_partitions(materializations: list[dict], count: int) -> list[str]:
    """Up to `count` partitions, latest first, preferring different models of one instance
    (whose counts differ in the demo: careful and hasty)."""
    latest = list(dict.fromkeys(m["partition"] for m in materializations if m["partition"]))
    if latest and "|" in latest[0]:
        instance = latest[0].split("|")[0]
        same_instance = [p for p in latest if p.split("|")[0] == instance]
        latest = same_instance + [p for p in latest if p not in same_instance]
    return latest[:count]


def check_partitions(dagster: Dagster, store, asset: str, partitions: list[str], failures: list[str]) -> dict:
    """Each partition's latest materialization against the store; returns them by partition."""
    latest = {p: dagster.materializations(asset, [p], limit=1)[0] for p in partitions}
    by_instance = asset == "preference_pairs"
    for partition, materialization in latest.items():
        # Multi-partition keys are `instance|model` (dimensions in name order).
        # "<instance>|<model>", or an instance alone (preference_pairs)
        dimensions = dict(zip(("instance", "model"), partition.split("|"), strict=False))
        where, params = partition_where(by_instance, partition, dimensions)
        found = entries(materialization)
        for _, label, sql in [c for c in PARTITION_COUNTS if c[0] == asset]:
            expected = store.sql(sql.format(where=where), params).to_pylist()[0]["count_star()"]
            shown = entry_text(found[label]) if label in found else None
            if shown != str(expected):
                failures.append(f"{asset} [{partition}]: {label} shows {shown}, the store holds {expected}")
        if asset == "rule_rewards":
            rules = store.sql(f"SELECT DISTINCT rule_id FROM rule_steps WHERE {where}", params).to_pylist()
            missing = [r["rule_id"] for r in rules if r["rule_id"] not in all_text(materialization)]
            if missing:
                failures.append(f"rule_rewards [{partition}]: hits per rule not shown for {missing}")
        if asset == "trajectory_rewards" and not all(f"reward_{w}" in found for w in ("mean", "min", "max")):
            failures.append(f"trajectory_rewards [{partition}]: no reward mean/min/max")
        if asset == "preference_pairs":
            check_pairs_preview(store, partition, materialization, failures)
    unbatched = [{k: v for k, v in entries(m).items() if not k.startswith("batch_")} for m in latest.values()]
    if len(unbatched) > 1 and all(
        json.dumps(u, sort_keys=True) == json.dumps(unbatched[0], sort_keys=True) for u in unbatched
    ):
        failures.append(f"{asset}: partitions {partitions} show the same metadata")
    return latest


def check_pairs_preview(store, instance: str, materialization: dict, failures: list[str]) -> None:
    pairs = store.sql("SELECT count(*) AS n FROM preference_pairs WHERE instance = ?", [instance]).to_pylist()[0]["n"]
    preview = entries(materialization).get("preview", {})
    if pairs:
        shown = [json.loads(r) for r in preview.get("table", {}).get("records", [])]
        if not shown or not all(r.get(c) for r in shown for c in ("prompt_tail", "chosen_text", "rejected_text")):
            failures.append(f"preference_pairs [{instance}]: preview lacks the prompt and chosen/rejected text")
    elif not preview or "no pair" not in entry_text(preview):
        failures.append(f"preference_pairs [{instance}]: no pairs and no reason given")


def check_markdown_ids(asset: str, materializations: list[dict], failures: list[str]) -> None:
    for materialization in materializations:
        for entry in materialization["metadataEntries"]:
            if entry["__typename"] == "MarkdownMetadataEntry" and (ids := unescaped_run_ids(entry["mdStr"])):
                failures.append(
                    f"{asset} [{materialization['partition'] or '-'}] {entry['label']}: "
                    f"{len(ids)} run ids render as strikethrough Markdown, e.g. {ids[0]}"
                )


def check_leaderboard(materialization: dict, failures: list[str]) -> None:
    texts = [entry_text(e) for e in materialization["metadataEntries"]]
    if not any("ISR" in t and "CSR" in t and "share" in t.lower() for t in texts):
        failures.append("leaderboard: ISR and CSR are not defined in its metadata")
    plots = [t for t in texts if t.count("data:image/png") == 1]
    if len(plots) < 2 or any(t.count("data:image/png") > 1 for t in texts):
        failures.append("leaderboard: the plots are not each their own entry")


def check_release_card(materialization: dict, failures: list[str]) -> None:
    found = entries(materialization)
    card_file = Path(entry_text(found.get("path", {"__typename": ""}))) / "README.md"
    if not card_file.exists():
        failures.append(f"hf_dataset_release: no release directory with a README.md in its metadata ({card_file})")
        return
    body = card_file.read_text().split("\n---\n", 1)[-1].strip()  # the card without its YAML header
    if not any(body[:200] in entry_text(e) for e in found.values()):
        failures.append("hf_dataset_release: the release card is not in its metadata")


# -- main ------------------------------------------------------------------------------------
def asset_url(base: str, asset: str, partition: str | None) -> str:
    query = {"view": "partitions", "partition": partition} if partition else {"view": "events"}
    return f"{base}/assets/{asset}?{urllib.parse.urlencode(query)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", default=os.environ.get("TRAJHUB_HOME", str(ROOT / ".trajhub")))
    parser.add_argument("--demo", action="store_true", help="run scripts/demo.sh first")
    parser.add_argument("--out", help="screenshot directory (default: HOME/screenshots)")
    parser.add_argument("--partitions", type=int, default=2, help="partitions checked per partitioned asset")
    args = parser.parse_args()
    home = Path(args.home).resolve()
    out = Path(args.out or home / "screenshots").resolve()
    env = os.environ | {"TRAJHUB_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    if args.demo:
        subprocess.run([str(ROOT / "scripts" / "demo.sh")], env=env, cwd=ROOT, check=True)
    if not (home / "dagster").is_dir():
        raise SystemExit(f"no Dagster instance at {home / 'dagster'}: run scripts/demo.sh (or pass --demo)")
    out.mkdir(parents=True, exist_ok=True)
    os.environ["TRAJHUB_HOME"] = str(home)
    from trajhub_assets.store import Store  # after TRAJHUB_HOME is set

    store, failures = Store(), []
    dagster_port, chromium_port = free_port(), free_port()
    with ExitStack() as stack:
        dagster_log = out / "dagster-dev.log"
        dev = stack.enter_context(
            process_group(
                [
                    str(ROOT / ".venv" / "bin" / "dagster"),
                    "dev",
                    "-w",
                    "workspace.yaml",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(dagster_port),
                ],
                dagster_log,
                env,
            )
        )
        dagster = Dagster(dagster_port)
        wait_for("dagster dev", dagster.location_loaded, 180, dev, dagster_log)
        profile = stack.enter_context(tempfile.TemporaryDirectory(prefix="ui-chromium-"))
        chromium_log = out / "chromium.log"
        browser = stack.enter_context(
            process_group(
                [
                    shutil.which("chromium") or "chromium",
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--window-size=1600,1000",
                    f"--remote-debugging-port={chromium_port}",
                    f"--user-data-dir={profile}",
                    "about:blank",
                ],
                chromium_log,
            )
        )
        wait_for(
            "chromium",
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{chromium_port}/json/version", timeout=5).status == 200
                or None
            ),
            60,
            browser,
            chromium_log,
        )
        tab = Chromium(chromium_port)
        stack.callback(tab.socket.close)

        def shoot(name: str, path: str, expect: list[str], **options) -> None:
            missing = tab.shoot(dagster.url + path, out / f"{name}.png", expect, **options)
            print(f"screenshot {out / f'{name}.png'}" + (f" (never showed: {missing})" if missing else ""))
            if missing:
                failures.append(f"screenshot {name}: the page never showed {missing}")

        nodes = dagster.graphql(ASSETS)["assetNodes"]
        assets = [(n["assetKey"]["path"][-1], n["isPartitioned"]) for n in nodes]
        shoot("asset_graph", "/asset-groups", ["raw_trajectories", "hf_dataset_release"], expand_groups=True)
        for asset, partitioned in assets:
            materializations = dagster.materializations(asset, limit=200)
            if not materializations:
                print(f"{asset}: never materialized, no screenshot")
                continue
            if partitioned:
                partitions = pick_partitions(materializations, args.partitions)
                latest = check_partitions(dagster, store, asset, partitions, failures)
                for i, (partition, materialization) in enumerate(latest.items()):
                    labels = [e["label"] for e in materialization["metadataEntries"]][:3]
                    shoot(f"{asset}-{i}", asset_url("", asset, partition), labels, also_scrolled=True)
                checked = list(latest.values())
            else:
                checked = materializations[:1]
                labels = [e["label"] for e in checked[0]["metadataEntries"]][:3]
                shoot(
                    asset,
                    asset_url("", asset, None),
                    labels,
                    also_scrolled=True,
                    open_entries=OPENED_ENTRIES.get(asset, ()),
                )
            check_markdown_ids(asset, checked, failures)
            if asset == "leaderboard":
                check_leaderboard(checked[0], failures)
            if asset == "hf_dataset_release":
                check_release_card(checked[0], failures)
        runs = dagster.graphql(RUNS)["runsOrError"]["results"]
        if not runs:
            failures.append("runs: the instance has no runs")
        shoot("runs", "/runs", sorted({r["jobName"] for r in runs})[:2])
        print(f"runs: {len(runs)} latest, jobs {sorted({r['jobName'] for r in runs})}")
    for failure in failures:
        print(f"FAILED: {failure}")
    print(f"ui_screenshots: {len(failures)} checks failed; screenshots in {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
