"""The chat's command language: one text line in, calls on :class:`ChatServer` out.

Every front end shares it: a line that does not start with ``/`` is a message,
``//TEXT`` says ``/TEXT``, and ``/NAME ARGS`` runs a command from :data:`COMMANDS`.
This is also the one place where a :class:`~netproto.chat.state.ChatError` (a
peer's mistake) becomes a ``! TEXT`` line; the connection always stays usable.
"""

from __future__ import annotations

from collections.abc import Callable

from netproto.chat.state import ChatError, ChatServer, IParticipant, cleanText, errorLine, notice

Handler = Callable[[ChatServer, IParticipant, str], None]


def _nick(server: ChatServer, p: IParticipant, args: str) -> None:
    if not args:
        raise ChatError("usage: /nick NAME")
    server.rename(p, args)


def _join(server: ChatServer, p: IParticipant, args: str) -> None:
    if not args:
        raise ChatError("usage: /join ROOM")
    server.join(p, args)


def _rooms(server: ChatServer, p: IParticipant, args: str) -> None:
    server.listRooms(p)


def _who(server: ChatServer, p: IParticipant, args: str) -> None:
    server.who(p)


def _msg(server: ChatServer, p: IParticipant, args: str) -> None:
    nick, _, text = args.partition(" ")
    server.tell(p, nick, text)


def _me(server: ChatServer, p: IParticipant, args: str) -> None:
    server.act(p, args)


def _help(server: ChatServer, p: IParticipant, args: str) -> None:
    for line in HELP:
        server.send(p, line)


def _quit(server: ChatServer, p: IParticipant, args: str) -> None:
    server.quit(p, args or "quit")


#: ``/NAME`` -> (handler, synopsis, what it does). Names are matched ignoring case.
COMMANDS: dict[str, tuple[Handler, str, str]] = {
    "nick": (_nick, "/nick NAME", "change your nick (1-32 letters, digits, _ or -)"),
    "join": (_join, "/join ROOM", "leave your room and join ROOM (created if new)"),
    "rooms": (_rooms, "/rooms", "list the rooms and how many are in each"),
    "who": (_who, "/who", "list the nicks in your room"),
    "msg": (_msg, "/msg NICK TEXT", "private message to NICK, in any room"),
    "me": (_me, "/me TEXT", "action in your room: * NICK TEXT"),
    "help": (_help, "/help", "this list"),
    "quit": (_quit, "/quit [REASON]", "leave the chat"),
}

HELP: tuple[bytes, ...] = (
    notice("Commands:"),
    notice(f"  {'TEXT':16} say TEXT to your room (//TEXT says /TEXT)"),
    *(notice(f"  {synopsis:16} {doc}") for _, synopsis, doc in COMMANDS.values()),
)


def interpret(server: ChatServer, participant: IParticipant, text: str) -> None:
    """Act on one line from ``participant``; a mistake is answered with ``! TEXT``."""
    try:
        if not text.startswith("/"):
            server.say(participant, text)
        elif text.startswith("//"):
            server.say(participant, text[1:])
        else:
            name, _, args = text[1:].partition(" ")
            command = COMMANDS.get(name.lower())
            if command is None:
                raise ChatError(f"unknown command: /{cleanText(name)[:32]} (try /help)")
            command[0](server, participant, args.strip())
    except ChatError as e:
        server.send(participant, errorLine(str(e)))
