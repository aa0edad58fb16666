/* django_notebooks: show the bridge's notices on a notebook's page.

   The server sends a notice as a kernel-websocket frame of its own
   ({"op": "django-notebooks-notice", "data": {title, text, final, reason}})
   when it ends a session or refuses to open one (notices.py). marimo's
   run-mode page has nowhere to show such words, so this script, put in the
   page by the bridge before marimo's own code runs, watches every websocket
   the page opens:

   - a notice frame is taken (marimo never sees it) and shown at the top of
     the page, until the person reloads (final) or dismisses it;
   - after a final notice, the socket's close event is given the reason the
     notice carries when the server could not send it (daphne drops close
     reasons): that is what stops marimo's frontend from reconnecting.

   Text is set as text, never as HTML.

   It also tells the server what the page has read (sessions/flow.py): the
   server sends a mark ({"op": "django-notebooks-mark", "mark": token})
   every few hundred kilobytes, and stops sending while too much is unread;
   the page answers {"op": "django-notebooks-ack", "mark": token} with the
   latest mark it has, once per burst of frames. */
(function () {
  "use strict";
  var OP = "django-notebooks-notice";
  var NativeWebSocket = window.WebSocket;
  if (!NativeWebSocket || window.djangoNotebooksNotices) {
    return;
  }
  window.djangoNotebooksNotices = true;

  var MARK_OP = "django-notebooks-mark";
  var ACK_OP = "django-notebooks-ack";

  function readMark(data) {
    if (typeof data !== "string" || data.length > 256 || data.indexOf(MARK_OP) === -1) {
      return null;
    }
    try {
      var message = JSON.parse(data);
      return message && message.op === MARK_OP && typeof message.mark === "string"
        ? message.mark
        : null;
    } catch (error) {
      return null;
    }
  }

  // Acknowledge the marks the server sends on `socket` (never shown to
  // marimo): the latest one, once the frames that arrived together are read.
  // A timer of 0 ms, which a hidden tab may delay to a second: well within
  // the server's read timeout.
  function acknowledgeMarks(socket) {
    var latest = null;
    socket.addEventListener("message", function (event) {
      var mark = readMark(event.data);
      if (mark === null) {
        return;
      }
      event.stopImmediatePropagation();
      if (latest === null) {
        setTimeout(function () {
          if (socket.readyState === NativeWebSocket.OPEN) {
            socket.send(JSON.stringify({ op: ACK_OP, mark: latest }));
          }
          latest = null;
        }, 0);
      }
      latest = mark;
    });
  }

  function element(tag, text, style) {
    var made = document.createElement(tag);
    if (text) {
      made.textContent = text;
    }
    if (style) {
      made.setAttribute("style", style);
    }
    return made;
  }

  function show(notice) {
    var old = document.getElementById("django-notebooks-notice");
    if (old) {
      old.remove();
    }
    var box = element(
      "div",
      "",
      "position:fixed;top:0;left:0;right:0;z-index:2147483647;" +
        "display:flex;gap:1em;align-items:center;flex-wrap:wrap;" +
        "padding:0.75em 1em;font:15px/1.4 system-ui,sans-serif;" +
        "background:#fff4e5;color:#3b2300;border-bottom:2px solid #d97706;" +
        "box-shadow:0 2px 6px rgba(0,0,0,.15)"
    );
    box.id = "django-notebooks-notice";
    box.setAttribute("role", "alert");
    box.dataset.final = notice.final ? "true" : "false";
    var words = element("div", "", "flex:1 1 20em");
    words.appendChild(element("strong", String(notice.title || ""), "margin-right:0.5em"));
    words.appendChild(element("span", String(notice.text || "")));
    box.appendChild(words);
    var button = element(
      "button",
      notice.final ? "Reload" : "Dismiss",
      "font:inherit;padding:0.25em 0.9em;border:1px solid #d97706;" +
        "border-radius:4px;background:#fff;color:inherit;cursor:pointer"
    );
    button.type = "button";
    button.addEventListener("click", function () {
      if (notice.final) {
        window.location.reload();
      } else {
        box.remove();
      }
    });
    box.appendChild(button);
    (document.body || document.documentElement).appendChild(box);
  }

  function readNotice(data) {
    if (typeof data !== "string" || data.indexOf(OP) === -1) {
      return null;
    }
    try {
      var message = JSON.parse(data);
      return message && message.op === OP ? message.data : null;
    } catch (error) {
      return null;
    }
  }

  function NoticeWebSocket(url, protocols) {
    var socket =
      protocols === undefined
        ? new NativeWebSocket(url)
        : new NativeWebSocket(url, protocols);
    var endedWith = null; // the close reason a final notice carried
    acknowledgeMarks(socket);
    // Listeners added here run before any the page adds later, so these
    // can keep a frame or a close event from marimo's frontend.
    socket.addEventListener("message", function (event) {
      var notice = readNotice(event.data);
      if (!notice) {
        return;
      }
      event.stopImmediatePropagation();
      if (notice.final) {
        endedWith = notice.reason || "MARIMO_SHUTDOWN";
      }
      show(notice);
    });
    socket.addEventListener("close", function (event) {
      if (endedWith === null || event.reason || event.isTrusted === false) {
        return;
      }
      event.stopImmediatePropagation();
      socket.dispatchEvent(
        new CloseEvent("close", {
          code: event.code,
          reason: endedWith,
          wasClean: event.wasClean,
        })
      );
    });
    return socket;
  }
  NoticeWebSocket.prototype = NativeWebSocket.prototype;
  ["CONNECTING", "OPEN", "CLOSING", "CLOSED"].forEach(function (name) {
    NoticeWebSocket[name] = NativeWebSocket[name];
  });
  window.WebSocket = NoticeWebSocket;
})();
