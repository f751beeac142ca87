"""The dashboard in a real browser: Debian's Chromium, driven by Playwright for Python,
watches two swarm-node processes while two PyTorch scripts train.

The scripts hold after their first round until the test lets them go, so "the page updates
after the next round, without a reload" is checked without timing luck. Playwright drives
/usr/bin/chromium through ``executable_path``: no browser download (never
``playwright install``). The test skips only when /usr/bin/chromium is missing; ``.ci/run``
installs it.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT
from swarmlearn.p2p.certs import issue_certificate
from swarmlearn.p2p.identity import Role
from tests.test_dashboard import dashboard_process, read_url

pytestmark = pytest.mark.process

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BROWSER_WAIT_MS = 120_000


def api_of(data: Path) -> str:
    """The API address a swarm-node process logged (Hypercorn's "Running on" line)."""
    log = (data / "node.log").read_text()
    found = re.search(r"Running on https://(127\.0\.0\.1:\d+)", log)
    assert found, log
    return found[1]


def gated_script(
    socket: Path, node: int, gate: threading.Event, rounds: dict[int, int], batches: int = 10
) -> None:
    """Real training with PERFDATA that holds after its first round until ``gate`` is set,
    then trains ``batches`` batches (one more round) and finishes (a final round)."""
    import torch

    from swarmlearn.callback.pytorch import SwarmCallback
    from tests.test_callback_torch import digits_split, net

    model = net()
    x, y = digits_split(node, 2)
    data = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=False)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:64], y[:64]), 32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with SwarmCallback(
        syncFrequency=batches,
        minPeers=2,
        model=model,
        nodeSocket=str(socket),
        adsValData=val,
        lossFunction="CrossEntropyLoss",
        metricFunction="Accuracy",
        totalEpochs=1,
    ) as swarm:
        if not gate.wait(timeout=BROWSER_WAIT_MS / 1000):
            raise AssertionError("the test never let the training go on")
        for xb, yb in list(loader)[:batches]:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            swarm.step()
    rounds[node] = swarm.rounds_done


def test_a_real_browser_watches_two_daemons_train(tmp_path: Path) -> None:
    """Chromium opens the dashboard before training; the first round appears, and the next
    ones appear without a reload (the page keeps a marker that a reload would erase)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    from playwright.sync_api import expect, sync_playwright

    from swarmlearn.p2p.certs import CertificateAuthority
    from tests.test_callback_torch import two_daemons

    gate = threading.Event()
    rounds: dict[int, int] = {}
    with two_daemons(tmp_path) as data:
        pki = tmp_path / "pki"
        issue_certificate(CertificateAuthority.load(pki), "op", pki, hosts=[], roles=[Role.SWCI])
        scripts = [
            threading.Thread(target=gated_script, args=(data[i] / "sl.sock", i, gate, rounds))
            for i in range(2)
        ]
        with (
            dashboard_process(pki, api_of(data[0])) as process,
            sync_playwright() as playwright,
        ):
            url = read_url(process)
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_FLAGS, timeout=BROWSER_WAIT_MS
            )
            expect.set_options(timeout=BROWSER_WAIT_MS)  # a loaded machine is slow, not wrong
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 720})
                page.set_default_timeout(BROWSER_WAIT_MS)
                page.goto(url)
                expect(page.locator("table.nodes tbody tr")).to_have_count(2)
                page.evaluate("window.noReload = true")
                for script in scripts:
                    script.start()
                row = page.locator(f'tr[data-contract="{DEFAULT_CONTRACT}"]')
                expect(row).to_have_attribute("data-done", "1")
                assert "1 done, 0 failed, 1 in all" in row.inner_text()
                page.screenshot(path=tmp_path / "first-round.png", full_page=True)
                gate.set()  # the scripts go on: one more round, then the final one
                expect(row.locator("td").nth(6)).to_have_text("over")
                assert page.evaluate("window.noReload") is True
                assert int(row.get_attribute("data-done") or 0) >= 3
                page.screenshot(path=tmp_path / "overview.png", full_page=True)
                _check_rounds_and_curves(page, url, tmp_path)
            finally:
                gate.set()
                browser.close()
                for script in scripts:
                    script.join(timeout=BROWSER_WAIT_MS / 1000)
    assert rounds[0] == rounds[1] >= 3


def _check_rounds_and_curves(page: Any, url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page.goto(f"{url}/rounds")
    first = page.locator('tr[data-round="1"]')
    expect(first).to_have_attribute("data-status", "done")
    assert "(2 in, min 2)" in first.inner_text()
    page.goto(f"{url}/perf")
    expect(page.locator("svg.chart polyline")).to_have_count(4)  # loss and metric, 2 nodes
    page.screenshot(path=tmp_path / "perf.png", full_page=True)
    docs = os.environ.get("SWARMLEARN_DASHBOARD_PNG")  # to refresh docs/dashboard.png
    if docs:
        page.goto(url)
        page.screenshot(path=docs, full_page=True)
