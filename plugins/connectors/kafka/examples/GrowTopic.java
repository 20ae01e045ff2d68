// Kafka's own Java producer on a topic that grows under load: the counterpart of
// grow_topic.rs (librdkafka), for producers we did not write that share our topics.
//
//   java -cp "$(cat .stack/classpath/kafka.cp)" \
//     plugins/connectors/kafka/examples/GrowTopic.java [rounds] [from] [to] [hot] [threads]
//
// Each round creates a topic with `from` partitions (default 1), sends from `threads`
// threads (default 20) batches of three records to the last `hot` partitions (default
// 100) the topic will have, with an idempotent producer (acks=all, linger 1 ms, five
// requests in flight), grows the topic to `to` partitions (default 200), goes on for a
// while, then reads the topic back. A send to a partition the producer does not know yet
// waits for it in the metadata, so the first requests to a new partition leave as soon as
// the broker announces it, before it has created its log (the race that makes librdkafka
// acknowledge unwritten messages, see UNCONFIRMED in src/sink.rs).
//
// Prints, per round, the records acknowledged, those failed (by exception; a failed record
// may still have been written, and is counted), and those acknowledged but not in the log.
// Exit code 1 if any acknowledged record is missing. Bounded: a round lasts a few
// seconds, or until delivery.timeout.ms (60 s) when sends to a new partition stall, and
// deletes its topic. The broker is the local stack's (SALESFLOW_KAFKA_BOOTSTRAP, else
// 127.0.0.1:9092); loopback only.

import java.time.Duration;
import java.util.*;
import java.util.concurrent.*;
import java.util.concurrent.atomic.AtomicBoolean;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class GrowTopic {
    public static void main(String[] args) throws Exception {
        int rounds = args.length > 0 ? Integer.parseInt(args[0]) : 20;
        int from = args.length > 1 ? Integer.parseInt(args[1]) : 1;
        int to = args.length > 2 ? Integer.parseInt(args[2]) : 200;
        int hot = args.length > 3 ? Integer.parseInt(args[3]) : 100;
        int threads = args.length > 4 ? Integer.parseInt(args[4]) : 20;
        String bootstrap = Optional.ofNullable(System.getenv("SALESFLOW_KAFKA_BOOTSTRAP"))
                .orElse("127.0.0.1:9092");
        long totalLost = 0;
        try (Admin admin = Admin.create(Map.of("bootstrap.servers", bootstrap))) {
            for (int round = 0; round < rounds; round++) {
                String topic = "grow-topic-java-" + ProcessHandle.current().pid() + "-" + round;
                admin.createTopics(List.of(new NewTopic(topic, from, (short) 1))).all().get();
                Map<String, Long> acked = new ConcurrentHashMap<>();
                Map<String, Integer> failed = new ConcurrentSkipListMap<>();
                produceWhileGrowing(bootstrap, admin, topic, to, hot, threads, acked, failed);
                Set<String> stored = readBack(bootstrap, topic, to, acked.size());
                List<String> lost = new ArrayList<>();
                for (String key : acked.keySet()) {
                    if (!stored.contains(key)) {
                        lost.add(key);
                    }
                }
                Collections.sort(lost);
                for (String key : lost) {
                    System.out.println("  lost " + key + ": acknowledged at offset " + acked.get(key));
                }
                long failedButStored = stored.stream().filter(k -> !acked.containsKey(k)).count();
                System.out.println("round " + round + ": " + acked.size() + " acknowledged, "
                        + failed.values().stream().mapToInt(Integer::intValue).sum()
                        + " failed " + failed + " (" + failedButStored + " of them in the log), "
                        + lost.size() + " acknowledged not in the log");
                totalLost += lost.size();
                admin.deleteTopics(List.of(topic)).all().get();
            }
        }
        System.out.println(rounds + " rounds: " + totalLost + " acknowledged records not in the log");
        System.exit(totalLost == 0 ? 0 : 1);
    }

    static void produceWhileGrowing(String bootstrap, Admin admin, String topic, int to, int hot,
            int threads, Map<String, Long> acked, Map<String, Integer> failed) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("enable.idempotence", "true");
        props.put("acks", "all");
        props.put("linger.ms", "1");
        props.put("max.in.flight.requests.per.connection", "5");
        props.put("metadata.max.age.ms", "100");
        props.put("delivery.timeout.ms", "60000");
        props.put("max.block.ms", "10000");
        props.put("key.serializer", StringSerializer.class.getName());
        props.put("value.serializer", StringSerializer.class.getName());
        AtomicBoolean stop = new AtomicBoolean();
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(props)) {
            ExecutorService pool = Executors.newFixedThreadPool(threads);
            List<Future<?>> workers = new ArrayList<>();
            for (int w = 0; w < threads; w++) {
                int worker = w;
                workers.add(pool.submit(() -> {
                    long n = 0;
                    while (!stop.get()) {
                        int partition = to - 1 - (int) ((worker + n * threads) % hot);
                        for (int i = 0; i < 3; i++) {
                            String key = worker + "-" + n + "-" + i;
                            // Waits (up to max.block.ms) until the partition is in the
                            // metadata, then sends at once.
                            producer.send(new ProducerRecord<>(topic, partition, key, "\"" + key + "\""),
                                    (metadata, error) -> {
                                        if (error == null) {
                                            acked.put(key, metadata.offset());
                                        } else {
                                            if (failed.merge(error.getClass().getSimpleName(), 1, Integer::sum) == 1) {
                                                System.out.println("  first " + error);
                                            }
                                        }
                                    });
                        }
                        n++;
                        try {
                            Thread.sleep(1);
                        } catch (InterruptedException e) {
                            return;
                        }
                    }
                }));
            }
            Thread.sleep(300);
            admin.createPartitions(Map.of(topic, NewPartitions.increaseTo(to))).all().get();
            Thread.sleep(1500);
            stop.set(true);
            for (Future<?> worker : workers) {
                worker.get();
            }
            pool.shutdown();
            producer.flush();
        }
    }

    static Set<String> readBack(String bootstrap, String topic, int partitions, int expected) {
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("group.id", topic + "-check");
        props.put("enable.auto.commit", "false");
        props.put("key.deserializer", StringDeserializer.class.getName());
        props.put("value.deserializer", StringDeserializer.class.getName());
        Set<String> keys = new HashSet<>();
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(props)) {
            List<TopicPartition> all = new ArrayList<>();
            for (int p = 0; p < partitions; p++) {
                all.add(new TopicPartition(topic, p));
            }
            consumer.assign(all);
            consumer.seekToBeginning(all);
            long deadline = System.nanoTime() + Duration.ofSeconds(20).toNanos();
            while (System.nanoTime() < deadline) {
                ConsumerRecords<String, String> records = consumer.poll(Duration.ofMillis(200));
                records.forEach(r -> keys.add(r.key()));
                if (records.isEmpty() && keys.size() >= expected) {
                    break;
                }
            }
        }
        return keys;
    }
}
