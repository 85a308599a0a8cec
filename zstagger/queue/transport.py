"""zstagger's Redis transport: kombu's, made to survive whatever is found on a queue list
and a Redis that refuses writes.

kombu's Redis channel pops an item, decodes it as JSON and builds a message from it; any
other bytes raise inside the worker's event loop and stop the worker. Anyone who can
write to Redis can push such bytes. Here:

- an item that is not a message envelope (not UTF-8, not JSON, not an object, missing or
  mistyped fields, an undecodable body) is logged and moved to the bounded list
  :data:`DEAD_LETTER_KEY`; the worker goes on;
- when Redis is out of memory (``maxmemory`` with ``noeviction``) writes fail while reads
  and deletes still work. A popped message whose bookkeeping (the unacked hash) cannot be
  written is held and retried, not lost; a message that cannot be put back (reject with
  requeue, restore) stays in the unacked hash and is redelivered after the visibility
  timeout once Redis accepts writes again.

Selected by :mod:`.celery_app` for ``redis://`` and ``rediss://`` URLs (TLS and passwords
are handled by kombu exactly as before). Imports nothing from zstagger above the queue.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from queue import Empty
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from .jobstore import describe_failure, refuses_writes

log = logging.getLogger(__name__)

DEAD_LETTER_KEY = "zstagger:dead-letter"
DEAD_LETTER_MAX_ITEMS = 1000  # the newest are kept (LTRIM)
DEAD_LETTER_MAX_ITEM_BYTES = 64 * 1024  # of each item, the first bytes are kept
_WARN_EVERY = 30.0  # seconds between repeated warnings about a Redis that refuses writes


def envelope_problem(payload: Any) -> str | None:
    """Why ``payload`` (decoded JSON) is not a kombu message envelope, or None if it is one.

    Checks what kombu and the ack bookkeeping read before Celery sees the message; what
    the message means is Celery's to check (unknown task, content type, arguments).
    """
    if not isinstance(payload, dict):
        return f"a JSON {type(payload).__name__}, not a message envelope"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "no 'properties' object"
    tag = properties.get("delivery_tag")
    if not isinstance(tag, str) or not tag:
        return "no 'delivery_tag' string"
    info = properties.get("delivery_info")
    if not isinstance(info, dict) or not isinstance(info.get("exchange"), str) or not isinstance(info.get("routing_key"), str):
        return "no 'delivery_info' with 'exchange' and 'routing_key' strings"
    if properties.get("body_encoding") not in (None, "base64"):
        return f"unknown body_encoding {properties.get('body_encoding')!r}"
    priority = properties.get("priority")
    if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)):
        return "a 'priority' that is not an integer"
    if payload.get("body") is not None and not isinstance(payload.get("body"), str):
        return "a 'body' that is not a string"
    if payload.get("headers") is not None and not isinstance(payload.get("headers"), dict):
        return "'headers' that are not an object"
    for key in ("content-type", "content-encoding"):
        if payload.get(key) is not None and not isinstance(payload.get(key), str):
            return f"a '{key}' that is not a string"
    return None


def dead_letter_entry(raw: bytes | str, queue: str, reason: str) -> str:
    """The JSON kept in the dead-letter list for one item: where, why, when, and the item (bounded)."""
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else bytes(raw)
    kept = data[:DEAD_LETTER_MAX_ITEM_BYTES]
    entry: dict[str, Any] = {"queue": queue, "reason": reason, "time": time.time(), "size": len(data)}
    try:
        entry["item"] = kept.decode("utf-8")
    except UnicodeDecodeError:
        entry["item_b64"] = base64.b64encode(kept).decode("ascii")
    if len(kept) < len(data):
        entry["truncated"] = True
    return json.dumps(entry)


class QoS(kombu_redis.QoS):
    """Ack emulation whose restore paths survive a Redis that refuses writes or a mangled unacked entry."""

    _last_warning = 0.0

    def restore_visible(self, *args, **kwargs):
        try:
            return super().restore_visible(*args, **kwargs)
        except redis.ResponseError as exc:  # the sweep's lock (SET NX) is a write too
            if not refuses_writes(exc):
                raise
            self._warn(f"zstagger: {describe_failure(exc)}: abandoned chunks are put back once Redis accepts writes")
            return None

    def restore_by_tag(self, tag, client=None, leftmost=False):
        try:
            super().restore_by_tag(tag, client=client, leftmost=leftmost)
        except redis.ResponseError as exc:
            if not refuses_writes(exc):
                raise
            # The transaction was discarded whole: the message is still in the unacked hash,
            # and the visibility-timeout sweep puts it back once Redis accepts writes.
            self._warn(f"zstagger: {describe_failure(exc)}: a chunk stays unacknowledged and is redelivered "
                       f"after the visibility timeout once Redis accepts writes")
        except (ValueError, TypeError, KeyError) as exc:  # an unacked entry that is not [message, exchange, routing_key]
            self._drop_unreadable(tag, client, exc)

    def ack(self, delivery_tag):
        try:
            self._remove_from_indices(delivery_tag).execute()
        except redis.ResponseError as exc:  # ExecAbortError: the MULTI's commands were refused (out of memory)
            if not (refuses_writes(exc) or isinstance(exc, redis.exceptions.ExecAbortError)):
                raise
            # The chunk stays in the unacked hash: redelivered after the visibility timeout, it
            # finds its results stored and does nothing twice. The consumer goes on.
            self._warn(f"zstagger: {describe_failure(exc)}: an acknowledgement was not recorded; the chunk is "
                       "redelivered after the visibility timeout and finds its results stored")
        kombu_redis.virtual.QoS.ack(self, delivery_tag)

    def _drop_unreadable(self, tag, client, exc: Exception) -> None:
        with self.channel.conn_or_acquire(client) as conn:
            raw = conn.hget(self.unacked_key, tag)
            self._remove_from_indices(tag, conn.pipeline()).execute()
        self.channel.dead_letter(raw or b"", "unacked", f"unreadable unacked entry: {exc}")

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - QoS._last_warning >= _WARN_EVERY:
            QoS._last_warning = now
            log.warning(message)


class Channel(kombu_redis.Channel):
    QoS = QoS

    def dead_letter(self, raw: bytes | str, queue: str, reason: str) -> None:
        """Log a malformed item and keep it in the bounded dead-letter list (or drop it if Redis refuses)."""
        try:
            with self.conn_or_acquire() as client:
                client.pipeline().lpush(DEAD_LETTER_KEY, dead_letter_entry(raw, queue, reason)).ltrim(
                    DEAD_LETTER_KEY, 0, DEAD_LETTER_MAX_ITEMS - 1).execute()
            outcome = f"moved to {DEAD_LETTER_KEY}"
        except redis.RedisError as exc:
            outcome = f"dropped ({describe_failure(exc)})"
        log.error("zstagger: malformed item on queue %r (%s): %s", queue, reason, outcome)

    def _decode_item(self, item: bytes, queue: str) -> Any:
        """The decoded item, or None when it was dead-lettered."""
        try:
            payload = loads(bytes_to_str(item))
        except Exception as exc:  # noqa: BLE001  (UnicodeDecodeError, JSONDecodeError, kombu's object hooks)
            self.dead_letter(item, queue, f"not a JSON message: {type(exc).__name__}")
            return None
        problem = envelope_problem(payload)
        if problem:
            self.dead_letter(item, queue, problem)
            return None
        return payload

    # Mirrors kombu's Channel._brpop_read, but decodes through _decode_item.
    def _brpop_read(self, **options):
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                # if there's a ConnectionError, disconnect so the next iteration reconnects.
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            payload = self._decode_item(item, dest)
            if payload is not None:
                self.connection._deliver(payload, dest)
            return True
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    # Mirrors kombu's Channel._get (polling consumers, basic_get), decoding through _decode_item.
    def _get(self, queue):
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                while item := client.rpop(self._q_for_pri(queue, pri)):
                    self._maybe_update_queues_expire(client, queue)
                    payload = self._decode_item(item, queue)
                    if payload is not None:
                        return payload
            self._maybe_update_queues_expire(client, queue)
            raise Empty()

    def basic_consume(self, queue, no_ack, callback, consumer_tag, **kwargs):
        ret = super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

        def receive(raw_message):
            try:
                message = self.Message(raw_message, channel=self)
            except Exception as exc:  # noqa: BLE001  (a body that is not base64, an unknown compression, ...)
                self.dead_letter(dumps(raw_message), queue, f"unreadable envelope: {type(exc).__name__}: {exc}")
                return None
            if not no_ack:
                self._track_unacked(message, queue)
            return callback(message)

        self.connection._callbacks[queue] = receive
        return ret

    def _track_unacked(self, message, queue: str) -> None:
        """Record a popped message as unacknowledged; while Redis refuses writes (or is away),
        hold it and retry rather than lose it (it is in no Redis list any more)."""
        from celery.worker import state

        delay = 0.5
        while True:
            try:
                self.qos.append(message, message.delivery_tag)
                return
            except (redis.ResponseError, *self.connection_errors) as exc:
                if isinstance(exc, redis.ResponseError) and not refuses_writes(exc):
                    raise
                if state.should_terminate:  # a cold shutdown was asked for: nothing more can be done
                    log.error("zstagger: %s; cold shutdown: the chunk taken from %r is lost", describe_failure(exc), queue)
                    raise
                log.warning("zstagger: %s while taking a chunk from %r; holding it, retrying in %.0fs",
                            describe_failure(exc), queue, delay)
                time.sleep(delay)
                delay = min(2 * delay, 10.0)


class Transport(kombu_redis.Transport):
    Channel = Channel
