"""The Kafka / Redpanda transport, over confluent-kafka (librdkafka).

Features: publish with idempotence, ``acks=all`` and Java-compatible key partitioning;
consumer groups with at-least-once delivery (contiguous-prefix commits, cooperative
rebalancing), nack with delay and delivery counts that survive restarts (kept in the commit
metadata); replay of one partition from the start, an offset or a time; topic and group
administration (create, describe, alter incrementally, grow partitions, delete, reset an idle
group). Capabilities: :data:`~eventbus.adapters.kafka._transport.CAPABILITIES`.

Connection string::

    kafka://host:9092
    kafka://host1:9092,host2:9092
    redpanda://host:9092                                 (same protocol; an alias)
    kafka://user:pass@host:9093?security_protocol=SASL_SSL&sasl_mechanism=SCRAM-SHA-512
        &ssl_ca_location=/etc/ssl/ca.pem

Options (URL query or the ``options`` mapping; the mapping wins):

- ``auto_create`` (false): publish to an unknown topic creates it with 1 partition instead of
  raising TopicNotFoundError.
- ``connect_timeout`` (5): seconds ``connect()`` and metadata requests wait.
- ``client_id`` (eventbus).
- ``envelope`` (eventbus): ``cloudevents`` writes the CloudEvents Kafka binding in binary
  content mode, ``cloudevents-structured`` in structured mode; CloudEvents of either mode are
  read back as events whatever this says (``_cloudevents``).
- ``ce_source`` (/eventbus): the CloudEvents ``source`` of events published without one.
- any other key is a librdkafka setting (``security_protocol`` or ``security.protocol``);
  ``options["config"]`` passes a mapping of librdkafka settings verbatim. They override the
  defaults of every client this transport creates.

Per-consumer librdkafka settings go in ``ConsumerOptions.options``. The design (threads,
commits, nacks, limits) is described in ``docs/kafka.md`` and in each module's docstring.
"""

from eventbus.adapters.kafka._settings import KafkaSettings
from eventbus.adapters.kafka._transport import CAPABILITIES, KafkaTransport

__all__ = ["CAPABILITIES", "KafkaSettings", "KafkaTransport"]
