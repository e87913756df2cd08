"""Redis Streams transport (redis-py asyncio; Redis 7+; standalone or Cluster).

Features: topics of N partition streams with metadata (partitions, retention, max event
bytes, configs); adoption of plain streams written by other clients (any stream ``T`` is a
one-partition topic ``T``; entries without the eventbus marker arrive as records whose
``raw_fields`` hold their exact fields); keyed publish with Kafka's murmur2 partitioner;
batched publish (one Lua call per 1000 records); time retention (``MINID ~`` on write);
consumer groups with Kafka-like partition ownership (heartbeats, deterministic assignment,
hand-over of pending entries), nack with delay, visibility timeout, dead letters; replay by id
or time; group describe (lag, pending, members) and reset (XGROUP SETID with ENTRIESREAD).

Connection string::

    redis://[user:password@]host:port/db?option=value&...
    rediss://...?ssl_ca_certs=CA.pem&ssl_certfile=C.pem&ssl_keyfile=K.pem
                 &ssl_cert_reqs=none|optional|required&ssl_check_hostname=false   (TLS)
    redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]?...
                 (the service's primary, as the Sentinels name it; follows failovers)

Options (query parameters or the ``options`` mapping, which wins):

- ``cluster=true``: use ``redis.asyncio.cluster.RedisCluster`` (the URL names any node).
- ``auto_create=true``: publishing to an unknown topic creates it with one partition.
- ``socket_timeout`` (10 s), ``socket_connect_timeout`` (5 s), ``max_connections``.
- ``poll_interval`` (0.2 s): longest blocking read; waiting members heartbeat this often.
  Blocking reads are kept below half the socket timeout (a BLOCK longer than the socket
  timeout would raise a timeout in redis-py).
- ``metadata_ttl`` (5 s): how long a publisher caches topic metadata (partition count).
- ``discover_streams`` (true): ``list_topics`` lists plain streams too.
- ``wait_replicas`` (0) and ``wait_timeout_ms`` (100): publish sends ``WAIT`` after its writes
  and raises ``OperationTimeoutError`` when fewer replicas acknowledged them in time.
- ``sentinel_username``, ``sentinel_password`` (``redis+sentinel://`` only): the Sentinels'
  own credentials (the URL's are the data nodes').
- redis-py client arguments in the URL: ``health_check_interval``, ``client_name``,
  ``socket_keepalive``, ``retry_on_timeout``, ``single_connection_client``, ``protocol``,
  ``ssl_ca_path``, ``ssl_ciphers``, ``ssl_password``. Any other query parameter raises
  ``ConfigurationError`` naming the valid ones.
- ``redis_options`` (in code): a dict passed to the redis-py client unchanged; other keys of the
  ``options`` mapping that are redis-py client arguments are passed the same way (an unknown
  name raises ``ConfigurationError``).

See ``docs/redis.md`` for the key layout, the group design and what Redis cannot do.
"""

from eventbus.adapters.redis_streams._settings import RedisSettings
from eventbus.adapters.redis_streams._transport import CAPABILITIES, RedisTransport

__all__ = ["CAPABILITIES", "RedisSettings", "RedisTransport"]
