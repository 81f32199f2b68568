"""The chat page in a real browser: Debian's headless chromium driven by Playwright, against
the suite's stack (real engine, worker, Redis). Each state is saved as a screenshot in
tests/artifacts/page/. Without chromium these tests fail, saying how to install it (.ci/run
does); Playwright's own browser download is never used."""
import json
import socket
import struct
import threading
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.conftest import MODEL, serve
from tests.test_queue import LONG, Background, cancel, chat_body, running_id, wait_for

ARTIFACTS = Path(__file__).parent / "artifacts" / "page"
FAST = {"temperature": 0, "seed": 42, "num_predict": 60}
REPLY = 60_000  # ms a reply may take on a busy machine
PAYLOAD = ('<img src=x onerror="window.pwned=1"> <script>window.pwned=2</script> **bold** '
           '[click](javascript:window.pwned=3) [docs](https://example.com/docs)')


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    if not chromium:
        pytest.fail("the chat page's browser tests need Debian's chromium, and it is not "
                    "installed: apt-get install -y --no-install-recommends chromium (.ci/run "
                    "does this)", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        yield browser
        browser.close()


class Page:
    """A browser tab on the chat page, with what a test needs around it."""

    def __init__(self, browser, url, **context):
        self.url = url
        self.context = browser.new_context(viewport={"width": 1200, "height": 800}, **context)
        self.tab = self.context.new_page()
        self.errors, self.dialogs = [], []
        self.tab.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.tab.on("console", lambda m: self.errors.append(m.text)
                    if m.type == "error" and "Failed to load resource" not in m.text else None)
        self.tab.on("dialog", self._dialog)
        self.tab.set_default_timeout(30_000)

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.accept()

    def open(self, fragment="", ready=True):
        self.tab.goto(f"{self.url}/chat{fragment}")
        if ready:
            self.until(f"document.querySelector('#model').value === {json.dumps(MODEL)}")
        return self.tab

    def until(self, expression, timeout=30):
        """Poll a JavaScript expression (Playwright's wait_for_function evaluates strings,
        which the page's Content-Security-Policy rightly refuses)."""
        return wait_for(lambda: self.tab.evaluate(expression), timeout, expression)

    def options(self, options):
        if not self.tab.is_visible("#options"):
            self.tab.click("summary")
        self.tab.fill("#options", json.dumps(options))

    def send(self, text):
        self.tab.fill("#prompt", text)
        self.tab.press("#prompt", "Enter")

    def last_reply(self):
        return self.tab.locator("#messages article.assistant").last

    def shot(self, name):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.tab.screenshot(path=ARTIFACTS / f"{name}.png")

    def session_id(self):
        return self.tab.evaluate("location.hash.slice(1)")

    def close(self):
        self.context.close()
        assert self.errors == [], self.errors


@pytest.fixture
def page(browser, stack):
    page = Page(browser, stack.url)
    yield page
    page.close()


def api(url, method, path, key=None, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.request(method, url + path, headers=headers, timeout=60, **kwargs)


def imported(url, messages, title=None, key=None):
    doc = {"version": 1, "title": title, "threads": {MODEL: messages}}
    resp = api(url, "POST", "/api/sessions/import", key, json=doc)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def test_root_answers_clients_as_before_and_sends_browsers_to_the_page(stack):
    url = stack.url
    def curl(*args):
        return subprocess.run(["curl", "-s", *args, url + "/"], capture_output=True, text=True,
                              timeout=10).stdout

    assert curl() == "Ollama is running"
    assert curl("-I").startswith("HTTP/1.1 200")
    go_cli = {"Accept": "application/json", "Content-Type": "application/json",
              "User-Agent": "ollama/0.12.0 (amd64 linux) Go/go1.24.0"}  # its heartbeat
    assert requests.head(url + "/", headers=go_cli, timeout=5).status_code == 200
    for accept in ("*/*", "application/json", None, "text/plain, text/html"):
        resp = requests.get(url + "/", headers={"Accept": accept}, allow_redirects=False, timeout=5)
        assert (resp.status_code, resp.text) == (200, "Ollama is running"), accept
    browser_accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    resp = requests.get(url + "/", headers={"Accept": browser_accept}, allow_redirects=False,
                        timeout=5)
    assert resp.status_code == 302 and resp.headers["Location"] == "/chat"
    assert "Accept" in resp.headers["Vary"]
    assert requests.head(url + "/", headers={"Accept": browser_accept}, timeout=5).status_code == 200
    page = requests.get(url + "/chat", timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for name in ("chat.js", "api.js", "markdown.js", "chat.css"):
        assert requests.get(f"{url}/chat/static/{name}", timeout=5).status_code == 200, name
    assert requests.get(f"{url}/chat/static/nothing.js", timeout=5).json() == {
        "error": "404 page not found"}


def test_send_streams_tokens_then_the_session_is_found_after_reload(page, stack):
    tab = page.open()
    page.options(FAST)
    # Every text length the reply shows, and in which state, as the DOM changes.
    tab.evaluate("""() => {
        window.samples = [];
        new MutationObserver(() => {
            const reply = [...document.querySelectorAll('#messages article.assistant')].pop();
            if (reply) samples.push([reply.dataset.state, reply.querySelector('.body').textContent.length]);
        }).observe(document.querySelector('#messages'),
                   {subtree: true, childList: true, characterData: true, attributes: true});
    }""")
    page.send("Tell me about the sea.")
    tab.wait_for_selector("#messages article.assistant[data-state=streaming] .body p")
    page.shot("1-streaming")
    tab.wait_for_selector("#messages article.assistant[data-state=done]", timeout=REPLY)
    page.shot("2-reply")
    final = page.last_reply().locator(".body").inner_text()
    samples = tab.evaluate("samples")
    # The text grew while the reply was still streaming, and it ended done.
    assert len({n for state, n in samples if state == "streaming" and n > 0}) >= 2, samples
    assert samples[-1][0] == "done"

    sid = page.session_id()
    rows = stack.rows(sid)
    assert [(r.role, r.status) for r in rows] == [("user", "ok"), ("assistant", "ok")]
    assert rows[0].content == "Tell me about the sea." and rows[1].content.strip()
    # Named after its first message.
    tab.wait_for_selector(f"#sessions li[data-id='{sid}'] .title >> text='Tell me about the sea.'")

    tab.reload()  # the session is in the sidebar with its messages
    tab.wait_for_selector(f"#sessions li[data-id='{sid}'].current")
    tab.wait_for_selector("#messages article.assistant")
    texts = tab.locator("#messages article .body").all_inner_texts()
    assert texts == ["Tell me about the sea.", final]
    page.open()  # a fresh start: the session is found in the sidebar and opened from it
    tab.click(f"#sessions li[data-id='{sid}'] .open")
    tab.wait_for_selector("#messages article.assistant")
    assert tab.locator("#messages article .body").all_inner_texts() == texts
    page.shot("3-reloaded")

    # The same session goes on; Shift+Enter is a new line, Enter sends.
    page.options({**FAST, "num_predict": 4})
    tab.fill("#prompt", "line one")
    tab.press("#prompt", "Shift+Enter")
    tab.type("#prompt", "line two")
    assert tab.input_value("#prompt") == "line one\nline two"
    tab.press("#prompt", "Enter")
    tab.wait_for_selector("#messages article.assistant:nth-of-type(4)[data-state=done]",
                          timeout=REPLY)
    rows = stack.rows(sid)
    assert len(rows) == 4 and rows[2].content == "line one\nline two"


TIDES = [  # an earlier conversation, so that the screenshot shows rendered Markdown too
    {"role": "user", "content": "What makes the tides?"},
    {"role": "assistant", "content": "Mostly the **Moon**: its pull is a little stronger on the "
     "near side of the Earth than on the far side, which stretches the oceans into two bulges.\n\n"
     "- *Spring tides*: Sun and Moon in line, the biggest range\n"
     "- *Neap tides*: at right angles, the smallest\n\n"
     "A rough period: `12 h 25 min` between high tides."}]


def test_edit_regenerate_and_step_between_branches(page, stack):
    tab = page.open()
    page.options({**FAST, "num_predict": 4})
    page.send("Name a colour.")
    tab.wait_for_selector("#messages article.assistant[data-state=done]", timeout=REPLY)
    page.send("Name a fruit.")
    tab.wait_for_selector("#messages article.assistant:nth-of-type(4)[data-state=done]",
                          timeout=REPLY)
    tab.wait_for_selector("#messages article.user:nth-of-type(3) .branch .edit")
    sid = page.session_id()
    bodies = lambda: tab.locator("#messages article .body").all_inner_texts()  # noqa: E731

    # Edit the second question: a branch, its old question and reply aside.
    tab.click("#messages article.user:nth-of-type(3) .edit")
    tab.fill("#messages article.user:nth-of-type(3) .edit-input", "Name an animal.")
    tab.click("#messages article.user:nth-of-type(3) .save")
    tab.wait_for_selector("#messages article.user:nth-of-type(3) .where >> text='2/2'",
                          timeout=REPLY)
    assert bodies()[2] == "Name an animal." and len(bodies()) == 4
    page.shot("8-edited")
    assert len(stack.rows(sid)) == 6  # nothing stored twice

    # Regenerate the last reply: a sibling of it.
    tab.click("#messages article.assistant:nth-of-type(4) .regenerate")
    tab.wait_for_selector("#messages article.assistant:nth-of-type(4) .where >> text='2/2'",
                          timeout=REPLY)
    assert len(stack.rows(sid)) == 7 and bodies()[2] == "Name an animal."

    # Step back to the first branch of the second question: its own reply comes with it.
    tab.click("#messages article.user:nth-of-type(3) .prev")
    tab.wait_for_selector("#messages article.user:nth-of-type(3) .where >> text='1/2'")
    assert bodies()[2] == "Name a fruit." and len(bodies()) == 4
    page.shot("9-branch-1-of-2")
    tab.reload()  # the server keeps the active branch
    tab.wait_for_selector("#messages article.user:nth-of-type(3) .where >> text='1/2'")
    assert bodies()[2] == "Name a fruit."


def test_position_badge_while_another_request_holds_the_worker(page, stack):
    sid = imported(stack.url, TIDES, title="What makes the tides?")
    tab = page.open(f"#{sid}")
    tab.wait_for_selector("#messages article.assistant")
    page.options({**FAST, "num_predict": 8})
    slow_id = f"slow-{uuid.uuid4()}"
    slow = Background(stack.url, chat_body(LONG), slow_id)
    try:
        wait_for(lambda: running_id(stack.url) == slow_id, what="the slow request to run")
        page.send("And how high do they get?")
        badge = page.last_reply().locator(".badge")
        badge.filter(has_text="waiting: position 1").wait_for()
        page.shot("4-waiting")
        rid = page.last_reply().get_attribute("data-request-id")
        assert rid.startswith("web-")
        state = api(stack.url, "GET", f"/api/queue/{rid}").json()
        assert (state["state"], state["position"]) == ("queued", 1)
        assert page.last_reply().get_attribute("data-state") == "waiting"
    finally:
        cancel(stack, slow_id)
        slow.join(30)
    badge.wait_for(state="detached", timeout=REPLY)  # the reply takes its place
    tab.wait_for_selector("#messages article.assistant[data-state=done]", timeout=REPLY)
    assert page.last_reply().locator(".body").inner_text().strip()


def test_stop_cancels_the_request_and_marks_the_partial_reply(page, stack):
    tab = page.open()
    page.options(LONG)  # 400 tokens: many seconds, unless stopped
    page.send("Write a long essay about the history of the sea.")
    page.until("(document.querySelector('#messages article.assistant[data-state=streaming] .body')"
               " || {}).textContent?.length > 20", REPLY / 1000)
    clicked = time.monotonic()
    tab.click("#stop")
    reply = page.last_reply()
    tab.wait_for_selector("#messages article.assistant[data-state=stopped]", timeout=10_000)
    assert time.monotonic() - clicked < 5
    assert reply.locator(".status").inner_text() == "stopped"
    shown = reply.locator(".body").inner_text()
    assert shown.strip()
    page.shot("5-stopped")
    rid, sid = reply.get_attribute("data-request-id"), page.session_id()
    assert api(stack.url, "GET", f"/api/queue/{rid}").json()["state"] == "cancelled"
    stored = wait_for(lambda: [r for r in stack.rows(sid) if r.role == "assistant"],
                      what="the partial reply stored")
    assert stored[0].status == "cancelled" and stored[0].content.strip()
    assert tab.is_visible("#send") and tab.is_hidden("#stop")
    tab.reload()  # stored as cancelled, shown as stopped
    tab.wait_for_selector("#messages article.assistant .status")
    assert page.last_reply().locator(".status").inner_text() == "stopped"


def test_model_output_is_shown_as_text_never_as_html(page, stack):
    sid = imported(stack.url, [{"role": "user", "content": "show me <b>html</b>"},
                               {"role": "assistant", "content": PAYLOAD}],
                   title='<img src=y onerror="window.pwned=4">')
    tab = page.open(f"#{sid}")
    tab.wait_for_selector("#messages article.assistant")
    body = page.last_reply().locator(".body")
    text = body.inner_text()
    assert '<img src=x onerror="window.pwned=1">' in text and "<script>window.pwned=2</script>" in text
    assert tab.locator("#messages img, #messages script, #sessions img").count() == 0
    assert body.locator("strong").inner_text() == "bold"
    assert body.locator("a").count() == 1  # the javascript: link stays text
    assert body.locator("a").get_attribute("href") == "https://example.com/docs"
    assert "[click](javascript:window.pwned=3)" in text
    assert tab.locator("#messages article.user .body").inner_text() == "show me <b>html</b>"
    title = tab.locator(f"#sessions li[data-id='{sid}'] .title")
    assert title.inner_text() == '<img src=y onerror="window.pwned=4">'
    assert tab.locator("#session-title").inner_text() == title.inner_text()
    tab.wait_for_timeout(300)  # an image error handler would have run by now
    assert tab.evaluate("window.pwned") is None
    page.shot("6-html-as-text")


MARKDOWN = [  # (model output, the HTML the page renders)
    ("<img src=x onerror=alert(1)>", "<p>&lt;img src=x onerror=alert(1)&gt;</p>"),
    ("Hi **there** and *you*, `a<b>`", "<p>Hi <strong>there</strong> and <em>you</em>, "
                                       "<code>a&lt;b&gt;</code></p>"),
    ("```html\n<script>x()</script>\n```", '<pre><code class="language-html">'
                                           "&lt;script&gt;x()&lt;/script&gt;</code></pre>"),
    ("- one\n- two", "<ul><li>one</li><li>two</li></ul>"),
    ("1. a\n2. b", "<ol><li>a</li><li>b</li></ol>"),
    ("[x](https://e.com/a_b) [y](javascript:alert(1)) [z](data:text/html,hi)",
     '<p><a href="https://e.com/a_b" rel="noopener noreferrer nofollow" target="_blank">x</a> '
     "[y](javascript:alert(1)) [z](data:text/html,hi)</p>"),
    ('[a"b](https://e.com/"onmouseover="x)', '<p>[a&quot;b](https://e.com/&quot;onmouseover=&quot;x)</p>'),
    ("one\ntwo\n\nthree", "<p>one<br>two</p>\n<p>three</p>"),
    ("## Title", "<h4>Title</h4>"),
    ("snake_case, __init__ and 2*3*4", "<p>snake_case, __init__ and 2*3*4</p>"),
    ("`**not bold**`", "<p><code>**not bold**</code></p>"),
    ("```\nunclosed <b>", "<pre><code>unclosed &lt;b&gt;</code></pre>"),
]


def test_markdown_renderer_in_the_browser(page):
    tab = page.open(ready=False)
    rendered = tab.evaluate("""async (cases) => {
        const markdown = await import('/chat/static/markdown.js');
        return cases.map((text) => markdown.render(text));
    }""", [text for text, _ in MARKDOWN])
    assert rendered == [html for _, html in MARKDOWN]


def test_sidebar_search_finds_what_was_said(page, stack):
    word = f"quokka{uuid.uuid4().hex[:6]}"
    said = imported(stack.url, [{"role": "user", "content": f"Have you seen a {word} today?"}],
                    title="Animals")
    tab = page.open()
    tab.fill("#search", word)
    page.until("document.querySelectorAll('#sessions li').length === 1")
    assert tab.locator("#sessions li").get_attribute("data-id") == said
    assert f"[{word}]" in tab.locator("#sessions .match").inner_text()
    page.shot("7b-search-messages")


def test_sidebar_search_rename_archive_delete_and_export(page, stack):
    word = uuid.uuid4().hex[:8]
    alpha = imported(stack.url, [{"role": "user", "content": "a"}], title=f"Alpha {word}")
    beta = imported(stack.url, [{"role": "user", "content": "b"}], title=f"Beta {word}")
    tab = page.open()
    tab.fill("#search", word.upper())  # any case
    page.until("document.querySelectorAll('#sessions li').length === 2")
    assert tab.locator("#sessions .title").all_inner_texts() == [f"Beta {word}", f"Alpha {word}"]
    page.shot("7-search")

    tab.click(f"#sessions li[data-id='{alpha}'] .rename")
    tab.fill(f"#sessions li[data-id='{alpha}'] .rename-input", f"Alpha renamed {word}")
    tab.press(f"#sessions li[data-id='{alpha}'] .rename-input", "Enter")
    tab.wait_for_selector(f"#sessions li[data-id='{alpha}'] .title >> text=Alpha renamed {word}")
    assert api(stack.url, "GET", f"/api/sessions/{alpha}").json()["title"] == f"Alpha renamed {word}"

    tab.click(f"#sessions li[data-id='{alpha}'] .archive")
    tab.wait_for_selector(f"#sessions li[data-id='{alpha}']", state="detached")
    tab.check("#show-archived")
    tab.wait_for_selector(f"#sessions li[data-id='{alpha}']")
    assert api(stack.url, "GET", f"/api/sessions/{alpha}").json()["archived"] is True
    tab.click(f"#sessions li[data-id='{alpha}'] .archive")  # Restore
    tab.wait_for_selector(f"#sessions li[data-id='{alpha}']", state="detached")
    assert api(stack.url, "GET", f"/api/sessions/{alpha}").json()["archived"] is False
    tab.uncheck("#show-archived")
    tab.wait_for_selector(f"#sessions li[data-id='{alpha}']")
    tab.click(f"#sessions li[data-id='{alpha}'] .delete")  # confirm() is accepted
    tab.wait_for_selector(f"#sessions li[data-id='{alpha}']", state="detached")
    assert page.dialogs == [f'Delete "Alpha renamed {word}" and its messages?']
    assert api(stack.url, "GET", f"/api/sessions/{alpha}").status_code == 404

    tab.click(f"#sessions li[data-id='{beta}'] .open")
    tab.wait_for_selector("#messages article.user")
    with tab.expect_download() as got:
        tab.click("#export-md")
    markdown = Path(got.value.path()).read_text()
    assert got.value.suggested_filename == f"chat-{beta[:8]}.md"
    assert markdown.startswith(f"# Beta {word}") and "**user**: b" in markdown
    with tab.expect_download() as got:
        tab.click("#export-json")
    doc = json.loads(Path(got.value.path()).read_text())
    assert doc["id"] == beta and doc["threads"][MODEL][0]["content"] == "b"


def test_truncated_context_is_noticed(page, stack):
    long = "The sea is wide and deep and full of old stories. " * 12  # ~130 tokens
    sid = imported(stack.url, [{"role": role, "content": long}
                               for role in ("user", "assistant") * 3])
    tab = page.open(f"#{sid}")
    tab.wait_for_selector("#messages article.assistant")
    page.options({**FAST, "num_predict": 4, "num_ctx": 256})
    page.send("And now?")
    tab.wait_for_selector("#messages article.assistant:nth-of-type(8)[data-state=done]",
                          timeout=REPLY)
    notice = tab.locator("#notice")
    notice.wait_for()
    assert "context window" in notice.inner_text() and "earlier messages" in notice.inner_text()
    page.shot("8-truncated")
    meta = api(stack.url, "GET", f"/api/sessions/{sid}").json()["meta"]
    assert meta["truncations"] == 1 and str(meta["last_truncation"]["dropped"]) in notice.inner_text()


def test_phone_width_and_dark_mode_are_readable(browser, stack):
    sid = imported(stack.url, [{"role": "user", "content": "What is in a long word?"},
                               {"role": "assistant", "content": "Something " + "x" * 300 +
                                "\n\n```\n" + "code " * 40 + "\n```"}], title="Phone check")
    page = Page(browser, stack.url, color_scheme="dark")
    try:
        page.tab.set_viewport_size({"width": 390, "height": 844})
        tab = page.open(f"#{sid}")
        tab.wait_for_selector("#messages article.assistant")
        assert tab.evaluate("document.documentElement.scrollWidth <= innerWidth")
        assert tab.is_visible("#prompt") and tab.is_visible("#send") and tab.is_visible("#model")
        colors = tab.evaluate("""() => {
            const rgb = (el, p) => getComputedStyle(el)[p].match(/\\d+/g).slice(0, 3).map(Number);
            const light = ([r, g, b]) => (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255;
            const body = document.querySelector('#messages article.assistant .body');
            return [light(rgb(document.body, 'backgroundColor')), light(rgb(body, 'color'))];
        }""")
        assert colors[0] < 0.2 and colors[1] > 0.7  # light text on a dark page
        assert tab.evaluate("document.querySelector('#sidebar').getBoundingClientRect().right <= 0")
        page.shot("9-phone-dark")
        tab.click("#open-sidebar")
        page.until("document.querySelector('#sidebar').getBoundingClientRect().left >= 0")
        page.shot("10-phone-sidebar")
        tab.click(f"#sessions li[data-id='{sid}'] .open")
        page.until("document.querySelector('#sidebar').getBoundingClientRect().right <= 0")
    finally:
        page.close()


@pytest.fixture(scope="module")
def keyed(stack):
    """The same stack with keys on: another app on the suite's Redis, database and worker (the
    worker stores what the web tells it, owner included, so it needs no keys of its own)."""
    keys = {"pagea": f"page-a-{uuid.uuid4().hex}", "pageb": f"page-b-{uuid.uuid4().hex}"}
    app = stack.app_with({"API_KEYS": ",".join(f"{k}={v}" for k, v in keys.items())})
    server, url = serve(app)
    yield url, keys["pagea"], keys["pageb"]
    server.shutdown()


def test_with_keys_the_page_asks_for_one_and_shows_only_its_sessions(browser, keyed):
    url, key_a, key_b = keyed
    assert requests.get(url + "/chat", timeout=5).status_code == 200  # the page needs no key
    assert requests.get(url + "/chat/static/chat.js", timeout=5).status_code == 200
    assert requests.get(url + "/api/sessions", timeout=5).status_code == 401
    page = Page(browser, url)
    try:
        tab = page.open(ready=False)
        dialog = tab.locator("#key-dialog")
        dialog.wait_for()
        page.shot("11-key-asked")
        tab.fill("#key", "not-a-key-0123456789")
        tab.press("#key", "Enter")
        tab.locator("#key-error", has_text="That key was refused.").wait_for()
        tab.fill("#key", key_a)
        tab.press("#key", "Enter")
        dialog.wait_for(state="hidden")
        page.until(f"document.querySelector('#model').value === {json.dumps(MODEL)}")
        assert tab.evaluate("localStorage.getItem('chatbot.key')") == key_a
        page.options({**FAST, "num_predict": 4})
        page.send("Hello from A")
        tab.wait_for_selector("#messages article.assistant[data-state=done]", timeout=REPLY)
        sid = page.session_id()
        tab.wait_for_selector(f"#sessions li[data-id='{sid}']")
        assert api(url, "GET", f"/api/sessions/{sid}", key_a).json()["title"] == "Hello from A"

        tab.reload()  # the key is kept: no question this time
        tab.wait_for_selector(f"#sessions li[data-id='{sid}']")
        assert not dialog.is_visible()

        tab.click("#forget-key")
        dialog.wait_for()
        assert tab.evaluate("localStorage.getItem('chatbot.key')") is None
        tab.fill("#key", key_b)
        tab.press("#key", "Enter")
        dialog.wait_for(state="hidden")
        tab.locator("#no-sessions").wait_for()  # B has none, and does not see A's
        assert tab.locator("#sessions li").count() == 0
        page.shot("12-key-b")
        tab.goto(f"{url}/chat#{sid}")  # naming A's session does not open it
        tab.locator("#notice", has_text=f"session '{sid}' not found").wait_for()
        assert tab.locator("#messages article").count() == 0
    finally:
        page.close()


class Cuttable:
    """A TCP relay in front of the app whose open connections the test can cut at once, as
    a network that goes away does (new connections go through)."""

    def __init__(self, target):
        self.target = target.removeprefix("http://").split(":")
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.open = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            client, _ = self.server.accept()
            upstream = socket.create_connection((self.target[0], int(self.target[1])))
            self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        for sock in self.open:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)  # wakes its relay thread, which lets it go
            except OSError:
                pass
        self.open = []


def test_a_reply_whose_connection_drops_is_picked_up_again(browser, stack):
    relay = Cuttable(stack.url)
    page = Page(browser, relay.url)
    tab = page.open()
    page.options({**LONG, "num_predict": 60})
    page.send("Write a long essay about the history of the sea.")
    page.until("(document.querySelector('#messages article.assistant[data-state=streaming] .body')"
               " || {}).textContent?.length > 20", REPLY / 1000)
    relay.cut()  # the network drops mid-reply
    tab.wait_for_selector("#messages article.assistant[data-state=done]", timeout=REPLY)
    resumed = tab.evaluate("performance.getEntriesByType('resource')"
                           ".filter((e) => e.name.includes('/api/requests/')).length")
    assert resumed >= 1  # the page asked for the rest
    rows = stack.rows(page.session_id())
    assert [(r.role, r.status) for r in rows] == [("user", "ok"), ("assistant", "ok")]
    shown = " ".join(page.last_reply().locator(".body").inner_text().split())
    assert shown == " ".join(rows[1].content.replace("**", "").replace("#", "").split())
    page.errors = [e for e in page.errors if "network" not in e.lower()]
    page.close()
