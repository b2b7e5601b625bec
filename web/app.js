// The demo page: send the review to /explanations (same origin, through the front web server),
// fall back to /predictions when explanations are unavailable, and show label, calibrated
// probabilities and the words coloured by their attribution. No framework, no build step;
// text only ever enters the page through textContent, never as HTML.
"use strict";

const MODEL = "bert_sentiment";
const EXAMPLES = [
  "The film was dreadful. Two hours of wooden acting and a plot that made no sense.",
  "A wonderful, moving film with a brilliant cast. I loved every minute of it.",
  "It starts slow and the dialogue is clumsy, but the last act is superb and the music stayed with me.",
  "I wanted to like it. The trailer was great, the actors are great, and yet the whole thing is a boring waste of time.",
];
const LEVELS = 4;  // colour strengths, style.css has .towards-*.level-1 .. level-4

const $ = (id) => document.getElementById(id);
let exampleIndex = 0;

async function post(route, text) {
  const response = await fetch(`/${route}/${MODEL}`, {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({text}),
  });
  let body = null;
  try {
    body = await response.json();
  } catch {
    // TorchServe's own 413 (body over 2 MiB) comes without a body
  }
  return {status: response.status, ok: response.ok, body,
          retryAfter: response.headers.get("Retry-After")};
}

// A failure of the explanations route itself, as opposed to a bad review (4xx), which the
// predictions route would refuse just the same.
function explanationsUnavailable(answer) {
  return answer === null || answer.status === 404 || answer.status === 405 || answer.status >= 500;
}

function errorMessage(answer) {
  if (answer === null) return "Could not reach the service. Is it running?";
  const body = answer.body || {};
  let message = body.error || body.message || "";
  if (!message && answer.status === 413) message = "The review is too long.";
  if (!message) message = `The service answered ${answer.status}.`;
  if (answer.status === 503 || answer.status === 429) {
    // TorchServe's full-queue 503 speaks of "no worker" and scaling: to a visitor it is "busy"
    if (body.type === "ServiceUnavailableException") message = "The service is busy.";
    const wait = answer.retryAfter ? `${answer.retryAfter} s` : "a moment";
    message = `${message.replace(/[.;\s]*$/, ".")} Try again in ${wait}.`;
  }
  return `${answer.status ? answer.status + ": " : ""}${message}`;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

async function analyse(text) {
  $("error").hidden = true;
  if (!text.trim()) {
    showError("Paste a review first.");
    return;
  }
  $("analyse").disabled = true;
  $("status").textContent = "Reading the review…";
  document.body.dataset.state = "busy";
  try {
    let answer = null;
    try {
      answer = await post("explanations", text);
    } catch {
      answer = null;
    }
    let explained = true;
    if (explanationsUnavailable(answer)) {
      explained = false;
      try {
        answer = await post("predictions", text);
      } catch {
        answer = null;
      }
    }
    if (answer === null || !answer.ok) {
      showError(errorMessage(answer));
      $("result").hidden = true;
      document.body.dataset.state = "error";
      return;
    }
    render(text, answer.body, explained);
    document.body.dataset.state = "done";
  } finally {
    $("analyse").disabled = false;
    $("status").textContent = "";
  }
}

function render(text, result, explained) {
  const probabilities = result.probabilities || {[result.label]: result.score};
  const label = $("label");
  label.textContent = result.label;
  label.className = `label ${cssName(result.label)}`;
  $("score").textContent = ` ${(100 * result.score).toFixed(1)} %`;

  const bars = $("bars");
  bars.replaceChildren();
  for (const [name, p] of Object.entries(probabilities)) {
    const row = element("div", "bar-row");
    const fill = element("div", `fill ${cssName(name)}`);
    fill.style.width = `${(100 * p).toFixed(1)}%`;  // CSSOM, allowed by the page's CSP
    const bar = element("div", "bar");
    bar.append(fill);
    row.append(element("span", "bar-name", name), bar,
               element("span", "bar-value", `${(100 * p).toFixed(1)} %`));
    bars.append(row);
  }

  const attributions = explained && Array.isArray(result.attributions) ? result.attributions : null;
  $("why-note").hidden = attributions !== null;
  $("why-note").textContent = attributions === null
    ? "Word attributions are not available right now; the label and probabilities are." : "";
  $("legend").hidden = attributions === null;
  highlight(text, attributions || [], probabilities);

  $("truncated").hidden = !result.truncated;
  $("model-version").textContent = result.model_version || "unknown";
  $("result").hidden = false;
}

// Attribution scores are towards the model's most probable class (the answered label, or the
// top class behind an "uncertain"); colour them by the sentiment they push towards.
function highlight(text, attributions, probabilities) {
  const target = Object.entries(probabilities).sort((a, b) => b[1] - a[1])[0][0];
  const sign = target === "negative" ? -1 : 1;
  const chars = Array.from(text);  // offsets count code points, like the server's
  const strongest = Math.max(1e-9, ...attributions.map((a) => Math.abs(a.score)));
  const out = $("highlighted");
  out.replaceChildren();
  let position = 0;
  for (const a of [...attributions].sort((x, y) => x.start - y.start)) {
    if (a.start < position || a.end > chars.length || a.end <= a.start) continue;
    out.append(chars.slice(position, a.start).join(""));
    const word = chars.slice(a.start, a.end).join("");
    const level = Math.round(LEVELS * Math.abs(a.score) / strongest);
    if (level === 0) {
      out.append(word);
    } else {
      const towards = sign * a.score >= 0 ? "towards-positive" : "towards-negative";
      const mark = element("mark", `${towards} level-${level}`, word);
      mark.title = `${a.score >= 0 ? "+" : ""}${a.score.toFixed(3)}`;
      out.append(mark);
    }
    position = a.end;
  }
  out.append(chars.slice(position).join(""));
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function cssName(label) {
  return ["positive", "negative"].includes(label) ? label : "other";
}

document.addEventListener("DOMContentLoaded", () => {
  $("review-form").addEventListener("submit", (event) => {
    event.preventDefault();
    analyse($("review").value);
  });
  $("example").addEventListener("click", () => {
    $("review").value = EXAMPLES[exampleIndex];
    exampleIndex = (exampleIndex + 1) % EXAMPLES.length;
    analyse($("review").value);
  });
  document.body.dataset.state = "ready";
});
