// The Kafka traffic of salesflow's pipelines, carried by Kafka's own Java clients: the
// yardstick `scripts/bench` holds the end-to-end run's Kafka CPU per record against.
//
// Orders arrive in bursts (a batch POST's orders at once), keyed by cart over the orders
// topic's partitions, and are produced as the Command API produces them (acks=all,
// idempotent, lz4, linger 1 ms); a relay consumes them as the domain does (fetches of
// 64 KiB or 50 ms) and produces each to the events topic (linger 5 ms), committing once
// the batch is acknowledged; a reader consumes the events as the projections do.
//
// Run with the Kafka classpath (source-file mode, JDK 11 or later):
//   java -cp "$(cat .stack/classpath/kafka.cp)" load/bench/java/PipelineShape.java \
//     BOOTSTRAP ORDERS_TOPIC EVENTS_TOPIC ORDERS_PER_S BURST SECONDS CARTS RECORD_BYTES
// It prints one line: "produced N relayed N read N seconds S".

import java.time.Duration;
import java.util.List;
import java.util.Properties;
import java.util.Random;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class PipelineShape {
    static Properties producer(String bootstrap, int lingerMs) {
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("acks", "all");
        p.put("enable.idempotence", "true");
        p.put("compression.type", "lz4");
        p.put("linger.ms", Integer.toString(lingerMs));
        p.put("batch.size", "1000000");
        p.put("key.serializer", StringSerializer.class.getName());
        p.put("value.serializer", ByteArraySerializer.class.getName());
        return p;
    }

    static Properties consumer(String bootstrap, String group, int maxRecords) {
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("group.id", group);
        p.put("enable.auto.commit", "false");
        p.put("auto.offset.reset", "earliest");
        p.put("fetch.min.bytes", "65536");
        p.put("fetch.max.wait.ms", "50");
        p.put("max.poll.records", Integer.toString(maxRecords));
        p.put("key.deserializer", StringDeserializer.class.getName());
        p.put("value.deserializer", ByteArrayDeserializer.class.getName());
        return p;
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 8) {
            System.err.println(
                "usage: PipelineShape BOOTSTRAP ORDERS_TOPIC EVENTS_TOPIC ORDERS_PER_S BURST SECONDS CARTS RECORD_BYTES");
            System.exit(2);
        }
        String bootstrap = args[0], orders = args[1], events = args[2];
        double rate = Double.parseDouble(args[3]);
        int burst = Integer.parseInt(args[4]);
        double seconds = Double.parseDouble(args[5]);
        int carts = Integer.parseInt(args[6]);
        int size = Integer.parseInt(args[7]);

        AtomicLong produced = new AtomicLong();
        AtomicLong relayed = new AtomicLong();
        AtomicLong read = new AtomicLong();
        AtomicBoolean sending = new AtomicBoolean(true);
        AtomicBoolean failed = new AtomicBoolean(false);

        Thread relay = new Thread(() -> {
            try (KafkaConsumer<String, byte[]> in = new KafkaConsumer<>(consumer(bootstrap, orders + "-relay", 500));
                 KafkaProducer<String, byte[]> out = new KafkaProducer<>(producer(bootstrap, 5))) {
                in.subscribe(List.of(orders));
                while (sending.get() || relayed.get() < produced.get()) {
                    ConsumerRecords<String, byte[]> batch = in.poll(Duration.ofMillis(100));
                    if (batch.isEmpty()) {
                        continue;
                    }
                    for (ConsumerRecord<String, byte[]> r : batch) {
                        out.send(new ProducerRecord<>(events, r.key(), r.value()), (m, e) -> {
                            if (e != null) {
                                failed.set(true);
                            }
                        });
                    }
                    out.flush();
                    in.commitAsync();
                    relayed.addAndGet(batch.count());
                }
            } catch (Exception e) {
                e.printStackTrace();
                failed.set(true);
            }
        });
        Thread reader = new Thread(() -> {
            try (KafkaConsumer<String, byte[]> in = new KafkaConsumer<>(consumer(bootstrap, events + "-reader", 1000))) {
                in.subscribe(List.of(events));
                while (sending.get() || read.get() < produced.get()) {
                    ConsumerRecords<String, byte[]> batch = in.poll(Duration.ofMillis(100));
                    if (!batch.isEmpty()) {
                        in.commitAsync();
                        read.addAndGet(batch.count());
                    }
                }
            } catch (Exception e) {
                e.printStackTrace();
                failed.set(true);
            }
        });
        relay.setDaemon(true);
        reader.setDaemon(true);
        relay.start();
        reader.start();

        Random random = new Random(13);
        byte[] value = new byte[size];
        for (int i = 0; i < size; i++) {
            value[i] = (byte) ('a' + random.nextInt(26));
        }
        long start = System.nanoTime();
        long interval = (long) (burst * 1e9 / rate);
        long bursts = (long) (seconds * rate / burst);
        try (KafkaProducer<String, byte[]> out = new KafkaProducer<>(producer(bootstrap, 1))) {
            for (long b = 0; b < bursts && !failed.get(); b++) {
                long due = start + b * interval;
                long wait = due - System.nanoTime();
                if (wait > 0) {
                    Thread.sleep(wait / 1_000_000, (int) (wait % 1_000_000));
                }
                for (int i = 0; i < burst; i++) {
                    String key = "cart-" + random.nextInt(carts);
                    out.send(new ProducerRecord<>(orders, key, value), (m, e) -> {
                        if (e != null) {
                            failed.set(true);
                        }
                    });
                }
                produced.addAndGet(burst);
            }
            out.flush();
        }
        sending.set(false);
        long deadline = System.nanoTime() + 60_000_000_000L;
        while ((relay.isAlive() || reader.isAlive()) && System.nanoTime() < deadline && !failed.get()) {
            relay.join(100);
            reader.join(100);
        }
        double elapsed = (System.nanoTime() - start) / 1e9;
        System.out.printf("produced %d relayed %d read %d seconds %.3f%n",
            produced.get(), relayed.get(), read.get(), elapsed);
        if (failed.get() || read.get() < produced.get()) {
            System.err.println("the shaped pipeline did not carry every record");
            System.exit(1);
        }
    }
}
