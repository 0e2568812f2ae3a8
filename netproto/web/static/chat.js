// netproto chat page (PROTOCOL.md sections 1 and 7): one section-1 line per
// WebSocket text message, both ways. Plain JavaScript, no build step, nothing
// loaded from elsewhere. Text from the server is only ever inserted as text
// (textContent, createTextNode): never as HTML.
"use strict";

(function () {
  var MAX_LOG = 1000;            // lines kept on the page; older ones are dropped
  var MAX_BACKOFF = 30000;       // ms: the longest wait between reconnection attempts
  var FIRST_BACKOFF = 500;       // ms: the first wait; doubled at each failure
  var ROOMS_EVERY = 20000;       // ms: the room list is refreshed this often while visible
  var WHO_DELAY = 300;           // ms: /who and /rooms wait this long after a join or part, to batch them

  function $(id) { return document.getElementById(id); }
  var log = $("log"), input = $("input"), statusLine = $("status");
  var nickShown = $("nick"), roomShown = $("room"), roomsList = $("rooms"), membersList = $("members");

  var ws = null, retries = 0, retryTimer = null, whoTimer = null;
  var nick = "", room = "";
  var wanted = {
    nick: sessionStorage.getItem("netproto.nick") || "",
    room: sessionStorage.getItem("netproto.room") || ""
  };
  // Replies to the page's own /who and /rooms are not shown in the log.
  var quiet = { who: 0, rooms: 0 };
  var listing = null;            // "who" or "rooms" while their "*** ..." lines go on
  var listingShown = false;
  var members = [];
  var sent = [], sentAt = 0;     // lines typed, for the up and down keys

  // -- the connection ---------------------------------------------------------

  function socketUrl() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/chat";
  }

  function setStatus(text, down) {
    statusLine.textContent = text;
    statusLine.className = down ? "down" : "";
    document.body.dataset.connected = down ? "no" : "yes";
  }

  function connect() {
    retryTimer = null;
    setStatus("connecting\u2026", true);
    var socket = new WebSocket(socketUrl());
    ws = socket;
    socket.onopen = function () {
      retries = 0;
      setStatus("connected", false);
    };
    socket.onmessage = function (event) {
      if (typeof event.data === "string") {
        receive(event.data);
      }
    };
    socket.onclose = function () {
      if (ws !== socket) {
        return;
      }
      ws = null;
      nick = room = "";
      show("*** disconnected", "notice");
      reconnectLater();
    };
  }

  function reconnectLater() {
    var delay = Math.min(MAX_BACKOFF, FIRST_BACKOFF * Math.pow(2, retries));
    delay = delay * (0.75 + Math.random() / 2);  // jitter: a restarted server is not hit by every page at once
    retries += 1;
    setStatus("disconnected; retrying in " + Math.ceil(delay / 1000) + " s", true);
    retryTimer = setTimeout(connect, delay);
  }

  function send(line) {
    if (ws === null || ws.readyState !== WebSocket.OPEN) {
      show("! not connected: " + line, "error");
      return false;
    }
    ws.send(line);
    return true;
  }

  function ask(what) {
    if (send("/" + what)) {
      quiet[what] += 1;
    }
  }

  // -- showing lines ----------------------------------------------------------

  function show(text, kind, who) {
    var atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    var item = document.createElement("li");
    item.className = kind;
    if (who !== undefined) {
      var name = document.createElement("span");
      name.className = "who";
      name.textContent = who;
      item.appendChild(name);
    }
    item.appendChild(document.createTextNode(text));
    log.appendChild(item);
    while (log.childNodes.length > MAX_LOG) {
      log.removeChild(log.firstChild);
    }
    if (atEnd) {
      log.scrollTop = log.scrollHeight;
    }
  }

  // One server line, shown in its section-1 form.
  function display(line) {
    var m;
    if (line.indexOf("! ") === 0) {
      show(line, "error");
    } else if (line.indexOf("*** history: ") === 0) {
      show(line.slice(13), "history");
    } else if (line.indexOf("*** ") === 0) {
      show(line, "notice");
    } else if ((m = /^<([^>]+)> ([\s\S]*)$/.exec(line))) {
      show(" " + m[2], "msg", "<" + m[1] + ">");
    } else if ((m = /^\*([^*\s]+)\* ([\s\S]*)$/.exec(line))) {
      show(" " + m[2], "private", "*" + m[1] + "*");
    } else if ((m = /^\* (\S+) ([\s\S]*)$/.exec(line))) {
      show(" " + m[2], "action", "* " + m[1]);
    } else {
      show(line, "plain");
    }
  }

  // -- what the lines say about us -------------------------------------------

  function setNick(value) {
    nick = value;
    nickShown.textContent = value;
    $("nick-input").value = value;
  }

  // Welcomed, the page shows where the server put it; a join it asked for is remembered.
  function setRoom(value, remember) {
    room = value;
    roomShown.textContent = value;
    if (remember) {
      wanted.room = value;
      sessionStorage.setItem("netproto.room", value);
    }
    markCurrentRoom();
  }

  function showMembers() {
    membersList.textContent = "";
    members.forEach(function (name) {
      var item = document.createElement("li");
      item.textContent = name;
      if (name === nick) {
        item.className = "me";
      }
      membersList.appendChild(item);
    });
  }

  function showRooms(entries) {
    roomsList.textContent = "";
    entries.forEach(function (entry) {
      var m = /^(#\S+) \((\d+)\)$/.exec(entry);
      if (!m) {
        return;
      }
      var item = document.createElement("li");
      var button = document.createElement("button");
      button.type = "button";
      button.textContent = m[1] + " (" + m[2] + ")";
      button.dataset.room = m[1];
      button.addEventListener("click", function () { join(m[1]); });
      item.appendChild(button);
      roomsList.appendChild(item);
    });
    markCurrentRoom();
  }

  function markCurrentRoom() {
    Array.prototype.forEach.call(roomsList.querySelectorAll("li"), function (item) {
      var here = item.firstChild.dataset.room.toLowerCase() === room.toLowerCase();
      item.className = here ? "current" : "";
    });
  }

  function whoSoon() {
    if (whoTimer === null) {
      whoTimer = setTimeout(function () {
        whoTimer = null;
        ask("who");
        ask("rooms");  // the counts changed too
      }, WHO_DELAY);
    }
  }

  function splitList(text) {
    return text === "" ? [] : text.split(", ");
  }

  // Returns true when the line is the reply to the page's own /who or /rooms.
  function learn(line) {
    var m;
    if (listing !== null && (m = /^\*\*\* \.\.\. (.*)$/.exec(line))) {
      var more = splitList(m[1]);
      if (listing === "who") {
        members = members.concat(more);
        showMembers();
      } else {
        roomsEntries = roomsEntries.concat(more);
        showRooms(roomsEntries);
      }
      return !listingShown;
    }
    listing = null;
    if ((m = /^\*\*\* Welcome to netproto chat\. You are (\S+) in (#\S+)\./.exec(line))) {
      setNick(m[1]);
      setRoom(m[2], false);
      arrived();
    } else if ((m = /^\*\*\* (\S+) is now known as (\S+)$/.exec(line))) {
      if (m[1] === nick) {
        setNick(m[2]);
        wanted.nick = m[2];
        sessionStorage.setItem("netproto.nick", m[2]);
      }
      whoSoon();
    } else if ((m = /^\*\*\* (\S+) has joined (#\S+)$/.exec(line))) {
      if (m[1] === nick) {
        setRoom(m[2], true);
        ask("rooms");
      }
      whoSoon();
    } else if ((m = /^\*\*\* (\S+) has (left #\S+|quit \(.*\))$/.exec(line))) {
      whoSoon();
    } else if ((m = /^\*\*\* (\d+) in (#\S+)(?:: (.*))?$/.exec(line))) {
      members = splitList(m[3] || "");
      showMembers();
      return heading("who");
    } else if ((m = /^\*\*\* (\d+) rooms?(?:: (.*))?$/.exec(line))) {
      roomsEntries = splitList(m[2] || "");
      showRooms(roomsEntries);
      return heading("rooms");
    }
    return false;
  }
  var roomsEntries = [];

  function heading(what) {
    listing = what;
    listingShown = quiet[what] === 0;
    if (!listingShown) {
      quiet[what] -= 1;
    }
    return !listingShown;
  }

  // Welcomed (again): take back the nick and room this page had.
  function arrived() {
    quiet.who = quiet.rooms = 0;
    if (wanted.nick && wanted.nick !== nick) {
      send("/nick " + wanted.nick);
    }
    if (wanted.room && wanted.room.toLowerCase() !== room.toLowerCase()) {
      send("/join " + wanted.room);
    } else {
      ask("who");
      ask("rooms");
    }
  }

  function receive(line) {
    if (!learn(line)) {
      display(line);
    }
  }

  // -- what the user does -----------------------------------------------------

  function join(name) {
    send("/join " + name);
    input.focus();
  }

  function say(line) {
    if (line.trim() === "") {
      return;
    }
    if (!send(line)) {
      return;
    }
    sent.push(line);
    sentAt = sent.length;
    var m;
    if (line.indexOf("/") !== 0 || line.indexOf("//") === 0) {
      var text = line.indexOf("//") === 0 ? line.slice(1) : line;
      show(" " + text, "msg own", "<" + nick + ">");
    } else if ((m = /^\/me (.+)$/i.exec(line))) {
      show(" " + m[1], "action own", "* " + nick);
    } else if ((m = /^\/msg (\S+) (.+)$/i.exec(line))) {
      show(" " + m[2], "private own", "-> *" + m[1] + "*");
    }
  }

  $("say").addEventListener("submit", function (event) {
    event.preventDefault();
    say(input.value);
    input.value = "";
  });

  input.addEventListener("keydown", function (event) {
    if (event.key === "ArrowUp" && sentAt > 0) {
      sentAt -= 1;
      input.value = sent[sentAt];
      event.preventDefault();
    } else if (event.key === "ArrowDown" && sentAt < sent.length) {
      sentAt += 1;
      input.value = sentAt < sent.length ? sent[sentAt] : "";
      event.preventDefault();
    }
  });

  $("nick-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var value = $("nick-input").value.trim();
    if (value && value !== nick) {
      send("/nick " + value);
    }
    input.focus();
  });

  $("room-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var value = $("room-input").value.trim();
    if (value) {
      join(value);
      $("room-input").value = "";
    }
  });

  $("refresh-rooms").addEventListener("click", function () { ask("rooms"); });

  setInterval(function () {
    if (!document.hidden && nick !== "") {
      ask("rooms");
    }
  }, ROOMS_EVERY);

  connect();
})();
