/* django_notebooks: size each {% notebook %} frame to its notebook.

   The notebook's page comes from this site, so its document can be read from
   here: the script measures its content and sets the frame's height, again
   whenever the content changes (cells running, outputs re-rendering, images
   loading, the frame getting narrower), so the notebook never scrolls inside
   the page. Frames with a fixed height (no data-notebook-autosize) are left
   alone, and so is a frame whose page is on another site (it cannot be read).

   Loaded with `defer`, once per page; frames added later (an htmx swap, say)
   are picked up too. No inline script, so a strict Content-Security-Policy
   needs nothing more than 'self' for scripts. */
(function () {
  "use strict";
  if (window.djangoNotebooksEmbed) {
    return; // the script is on the page twice: the first copy does the work
  }
  var SELECTOR = "iframe[data-notebook-autosize]";
  var frames = new WeakMap(); // iframe -> what is known about it (track())

  function px(value) {
    return parseFloat(value) || 0;
  }

  // The element the page scrolls in: the document itself (null), or an
  // element that fills the viewport and scrolls its own content, as marimo's
  // page does. Only viewport-filling elements are searched, so this is cheap.
  function scrollerOf(doc) {
    var win = doc.defaultView;
    var view = doc.documentElement.clientHeight;
    var queue = doc.body ? [doc.body] : [];
    while (queue.length) {
      var children = queue.shift().children;
      for (var i = 0; i < children.length; i++) {
        var child = children[i];
        var style = win.getComputedStyle(child);
        if (style.display === "contents") {
          queue.push(child); // no box of its own: look at its children
          continue;
        }
        if (child.getBoundingClientRect().height < view - 1) {
          continue;
        }
        if (style.overflowY === "auto" || style.overflowY === "scroll") {
          return child;
        }
        queue.push(child);
      }
    }
    return null;
  }

  // How tall `box`'s content is, from the box's top edge to the bottom of
  // its lowest child (margin and the box's own padding included), whatever
  // height the box has been given.
  function contentHeight(box) {
    var doc = box.ownerDocument;
    var win = doc.defaultView;
    // Children of an inner scroller move up as it scrolls; the scroller
    // does not. (The document's own box moves with its children.)
    var scrolled = box === doc.documentElement ? 0 : box.scrollTop;
    var top = box.getBoundingClientRect().top - scrolled;
    var bottom = 0;
    for (var i = 0; i < box.children.length; i++) {
      var child = box.children[i];
      var style = win.getComputedStyle(child);
      if (
        style.display === "none" ||
        style.position === "fixed" ||
        style.position === "absolute"
      ) {
        continue;
      }
      var childBottom =
        child.getBoundingClientRect().bottom + px(style.marginBottom) - top;
      bottom = Math.max(bottom, childBottom);
    }
    var own = win.getComputedStyle(box);
    return bottom + px(own.paddingBottom) + px(own.borderBottomWidth);
  }

  // The viewport height at which the document shows all of its content and
  // scrolls nowhere.
  function wantedHeight(doc, state) {
    var view = doc.documentElement.clientHeight;
    var scroller = scrollerOf(doc);
    var box = scroller || doc.documentElement;
    var content = contentHeight(box);
    // Everything of the viewport that is not the scroller's content area
    // (a header above it, a horizontal scrollbar below it) stays.
    var around = scroller ? view - scroller.clientHeight : 0;
    if (scroller) {
      var style = doc.defaultView.getComputedStyle(scroller);
      around -= px(style.borderTopWidth) + px(style.borderBottomWidth);
    }
    var wanted = around + content;
    // Content that sticks out of its children (negative margins, overflowing
    // descendants) shows as overflow: grow by it. Remember that height for
    // this content, or the next measurement would shrink back and loop.
    var scrolls = box.scrollHeight - box.clientHeight;
    if (scrolls > 1) {
      state.floor = { content: content, height: view + scrolls };
    }
    if (state.floor && state.floor.content === content) {
      wanted = Math.max(wanted, state.floor.height);
    }
    return Math.ceil(wanted);
  }

  function resize(frame) {
    var state = frames.get(frame);
    state.scheduled = false;
    var doc = readable(frame);
    if (!doc || !doc.body) {
      return;
    }
    state.observeContent(doc); // the content may have been replaced
    var wanted = wantedHeight(doc, state);
    var view = doc.documentElement.clientHeight;
    var change = wanted - view;
    if (state.mutated) {
      state.held = null;
    }
    state.mutated = false;
    if (Math.abs(change) < 1) {
      state.lastGrowth = 0;
      state.held = null;
      return;
    }
    // Content sized in vh grows with the frame: asking to grow by what it
    // just grew by, with no change to the document in between, it would
    // never stop. An animation that grows by the same step each frame looks
    // alike, but ends: so hold, try once more a moment later, and if that
    // growth asks for the same again, stay until the document changes.
    if (change > 0 && change === state.lastGrowth && state.held !== "retry") {
      if (state.held === null) {
        state.held = "waiting";
        window.setTimeout(function () {
          if (state.held === "waiting") {
            state.held = "retry";
            schedule(frame);
          }
        }, 300);
      }
      return;
    }
    state.held = state.held === "retry" ? "tried" : null;
    state.lastGrowth = change > 0 ? change : 0;
    // The frame's own border and padding (a project may style them) stay.
    var extra = 0;
    if (window.getComputedStyle(frame).boxSizing === "border-box") {
      extra = frame.offsetHeight - frame.clientHeight;
    }
    frame.style.height = wanted + extra + "px";
  }

  function schedule(frame) {
    var state = frames.get(frame);
    if (state && !state.scheduled) {
      state.scheduled = true;
      window.requestAnimationFrame(function () {
        resize(frame);
      });
    }
  }

  // The frame's document if this page may read it (same origin) and it is
  // a loaded page; null otherwise.
  function readable(frame) {
    try {
      var doc = frame.contentDocument;
      if (doc && doc.location.href !== "about:blank") {
        return doc;
      }
    } catch (error) {
      // another origin: leave the frame as it is
    }
    return null;
  }

  // Watch the document in the frame (again after each navigation of the
  // frame, which replaces the document).
  function attach(frame) {
    var state = frames.get(frame);
    state.detach();
    var doc = readable(frame);
    if (!doc) {
      return;
    }
    var win = doc.defaultView;
    var onChange = function () {
      schedule(frame);
    };
    // The observers belong to the frame's window, whose rendering they
    // follow. Sizes change without DOM changes (fonts, images, a narrower
    // frame)...
    var resized = new win.ResizeObserver(onChange);
    // ...and DOM changes (cells re-rendering) may not resize what is watched.
    var mutated = new win.MutationObserver(function () {
      state.mutated = true;
      schedule(frame);
    });
    mutated.observe(doc.documentElement, {
      childList: true,
      subtree: true,
      characterData: true,
      attributes: true,
    });
    var watched = [];
    // Watch the document and the children of whatever scrolls, so that any
    // content that grows or shrinks is seen.
    state.observeContent = function (current) {
      var scroller = scrollerOf(current) || current.body;
      var targets = [current.documentElement, scroller].concat(
        Array.prototype.slice.call(scroller.children)
      );
      var same =
        targets.length === watched.length &&
        targets.every(function (target, i) {
          return target === watched[i];
        });
      if (!same) {
        resized.disconnect();
        targets.forEach(function (target) {
          resized.observe(target);
        });
        watched = targets;
      }
    };
    state.detach = function () {
      resized.disconnect();
      mutated.disconnect();
      state.detach = function () {};
    };
    state.floor = null;
    state.lastGrowth = 0;
    state.held = null;
    state.mutated = true;
    state.observeContent(doc);
    schedule(frame);
  }

  function track(frame) {
    if (frames.has(frame)) {
      return;
    }
    frames.set(frame, {
      scheduled: false,
      floor: null,
      lastGrowth: 0, // what the last growth added (0 after a shrink)
      held: null, // a growth held back: null, "waiting", "retry" or "tried"
      mutated: true, // the document changed since the last measurement
      detach: function () {},
      observeContent: function () {},
    });
    frame.addEventListener("load", function () {
      attach(frame);
    });
    // A frame that loaded before this script ran gets no more load event.
    if (readable(frame) && frame.contentDocument.readyState === "complete") {
      attach(frame);
    }
  }

  function trackAll(root) {
    if (root.matches && root.matches(SELECTOR)) {
      track(root);
    }
    if (root.querySelectorAll) {
      root.querySelectorAll(SELECTOR).forEach(track);
    }
  }

  function start() {
    trackAll(document);
    new MutationObserver(function (records) {
      records.forEach(function (record) {
        record.addedNodes.forEach(trackAll);
      });
    }).observe(document.documentElement, { childList: true, subtree: true });
  }

  window.djangoNotebooksEmbed = { resize: schedule };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
