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

   While a notice shows, the page is pushed down by the notice's height
   (nothing of the notebook is under it), and marimo's own words for what
   the notice explains (its "An internal error occurred" toast, its red
   "kernel not found") are hidden: the person reads one account of what
   happened, the bridge's. Both are undone when the notice is dismissed.

   A restart of the server: the bridge sends a notice that the site is
   restarting before the server closes the socket (sessions/stopping.py),
   and a server that closes it with 1012 ("service restart") without one
   gets the same words, from the script element's data-restarting.
   marimo's frontend reconnects once the server is back: to its own kernel,
   which the kernel host kept (marimo says "reconnected"), and the notice
   goes; or to a new kernel ("kernel-ready"), and the page then says that
   the notebook started again.

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

  var BOX_ID = "django-notebooks-notice";
  // Set on <html> while a notice shows; its height is the variable's.
  var SHOWING = "data-django-notebooks-notice";
  var HEIGHT = "--django-notebooks-notice-height";
  var HIDDEN = "data-django-notebooks-hidden";
  var SERVICE_RESTART = 1012; // the close code uvicorn stops with
  // The start of marimo's frames for a new kernel's page and for a page
  // that found its kernel again (marimo/_server/api/endpoints/ws).
  var KERNEL_READY = '{"op": "kernel-ready"';
  var RECONNECTED = '{"op": "reconnected"';
  var RESTARTING = readRestarting(document.currentScript);

  function readRestarting(script) {
    try {
      return JSON.parse(script.getAttribute("data-restarting"));
    } catch (error) {
      return null;
    }
  }

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

  // marimo's own words that a notice of the bridge's stands in for, as
  // the run-mode page of marimo 0.25.2 shows them (if a later marimo shows
  // them otherwise, tests/browser/test_notice_bar.py fails and says so):
  // - its toast when a cell fails, "An internal error occurred" over "See
  //   console for details.": a Radix toast, an <li> in the region
  //   "Notifications (F8)" (the whole toast is hidden);
  // - its status once the kernel's websocket closed, "kernel not found": a
  //   <p> in a red <div> at the top of the notebook (the outermost element
  //   that holds only those words is hidden).
  var MARIMO_WORDS = [
    {
      text: "An internal error occurred",
      around: function (element) {
        return element.closest('[role="region"] li');
      },
    },
    {
      text: "kernel not found",
      around: function (element) {
        var outermost = element;
        while (
          outermost.parentElement &&
          outermost.parentElement !== document.body &&
          outermost.parentElement.textContent.trim() === "kernel not found"
        ) {
          outermost = outermost.parentElement;
        }
        return outermost;
      },
    },
  ];

  function hideMarimoWords(node) {
    var parent = node.parentElement;
    if (!parent || parent.closest("#" + BOX_ID)) {
      return;
    }
    var words = node.data.trim();
    MARIMO_WORDS.forEach(function (marimo) {
      if (words === marimo.text) {
        var around = marimo.around(parent);
        if (around) {
          around.setAttribute(HIDDEN, marimo.text);
        }
      }
    });
  }

  function hideMarimoWordsIn(node) {
    if (node.nodeType === Node.TEXT_NODE) {
      hideMarimoWords(node);
    } else if (node.nodeType === Node.ELEMENT_NODE) {
      var walker = document.createTreeWalker(node, NodeFilter.SHOW_TEXT);
      while (walker.nextNode()) {
        hideMarimoWords(walker.currentNode);
      }
    }
  }

  // While a notice shows, marimo's words are hidden as soon as they are
  // in the page (an observer's callback runs before the page is painted).
  // One hidden is shown again once it no longer holds marimo's words (a
  // page that held nothing else gets the notebook back, say).
  var marimoWatch = new MutationObserver(function (records) {
    document.querySelectorAll("[" + HIDDEN + "]").forEach(function (hidden) {
      if (hidden.textContent.indexOf(hidden.getAttribute(HIDDEN)) === -1) {
        hidden.removeAttribute(HIDDEN);
      }
    });
    records.forEach(function (record) {
      if (record.type === "characterData") {
        hideMarimoWordsIn(record.target);
      } else {
        record.addedNodes.forEach(hideMarimoWordsIn);
      }
    });
  });

  var pushDown = window.ResizeObserver
    ? new ResizeObserver(function () {
        measure();
      })
    : null;

  function measure() {
    var box = document.getElementById(BOX_ID);
    if (box) {
      document.documentElement.style.setProperty(HEIGHT, box.offsetHeight + "px");
    }
  }

  function addStyle() {
    if (document.getElementById(BOX_ID + "-style")) {
      return;
    }
    // The notebook's page (marimo's fills the viewport from an absolutely
    // placed box) goes below the notice: the body starts under it and is
    // its height shorter, and is what such boxes are placed in.
    var style = element(
      "style",
      "[" + HIDDEN + "]{display:none!important}" +
        "html[" + SHOWING + "] body{position:relative!important;" +
        "margin-top:var(" + HEIGHT + ")!important;min-height:0!important;" +
        "height:calc(100% - var(" + HEIGHT + "))!important}"
    );
    style.id = BOX_ID + "-style";
    (document.head || document.documentElement).appendChild(style);
  }

  function shown(box) {
    addStyle();
    document.documentElement.setAttribute(SHOWING, "");
    measure();
    if (pushDown) {
      pushDown.disconnect();
      pushDown.observe(box);
    }
    hideMarimoWordsIn(document.body);
    marimoWatch.observe(document.documentElement, {
      childList: true,
      subtree: true,
      characterData: true,
    });
  }

  function dismiss() {
    var box = document.getElementById(BOX_ID);
    if (box) {
      box.remove();
    }
    marimoWatch.disconnect();
    if (pushDown) {
      pushDown.disconnect();
    }
    document.documentElement.removeAttribute(SHOWING);
    document.documentElement.style.removeProperty(HEIGHT);
    document.querySelectorAll("[" + HIDDEN + "]").forEach(function (hidden) {
      hidden.removeAttribute(HIDDEN);
    });
  }

  function show(notice) {
    var old = document.getElementById(BOX_ID);
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
    box.id = BOX_ID;
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
        dismiss();
      }
    });
    box.appendChild(button);
    (document.body || document.documentElement).appendChild(box);
    shown(box);
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

  // What to say once the notebook runs again after the server restarted
  // (from the notice that said it is restarting), until it does.
  var afterRestart = null;

  function startedAgain(data) {
    if (afterRestart === null || typeof data !== "string") {
      return;
    }
    if (data.lastIndexOf(KERNEL_READY, 0) === 0) {
      show(afterRestart);
      afterRestart = null;
    } else if (data.lastIndexOf(RECONNECTED, 0) === 0) {
      // The same kernel after all (the server did not stop): nothing lost.
      afterRestart = null;
      dismiss();
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
        startedAgain(event.data);
        return;
      }
      event.stopImmediatePropagation();
      if (notice.final) {
        endedWith = notice.reason || "MARIMO_SHUTDOWN";
      }
      afterRestart = notice.then || null;
      show(notice);
    });
    socket.addEventListener("close", function (event) {
      if (
        event.code === SERVICE_RESTART &&
        endedWith === null &&
        afterRestart === null &&
        RESTARTING
      ) {
        afterRestart = RESTARTING.then || null;
        show(RESTARTING);
      }
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
