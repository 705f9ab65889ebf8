// Unit tests for the pure parts of iawlb: the SyncedList, the command-line
// and address parser, and the balancing and backoff rules of the Pool.
// Linked with build/iawlb.o (everything but main) and Catch2's main.
#include <catch2/catch.hpp>

#include "iawlb.hpp"

#include <arpa/inet.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <numeric>
#include <set>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

// ------------------------------------------------------------- SyncedList

TEST_CASE("SyncedList: single enqueue and pop keep FIFO order", "[unit][syncedlist]")
{
    SyncedList<int> l;
    CHECK(l.enqueue(1) == 0);  // was empty
    CHECK(l.enqueue(2) == 1);
    CHECK(l.enqueue(3) == 2);
    int x = 0;
    for (int want = 1; want <= 3; ++want) {
        REQUIRE(l.pop(&x));
        CHECK(x == want);
    }
    CHECK(l.size() == 0);
}

TEST_CASE("SyncedList: batch enqueue keeps FIFO order", "[unit][syncedlist]")
{
    SyncedList<int> l;
    l.enqueue(0);
    std::list<int> batch = {1, 2, 3, 4};
    CHECK(l.enqueue(batch) == 1);  // one was waiting before
    CHECK(batch.empty());          // the batch was spliced, not copied
    std::list<int> more = {5, 6};
    CHECK(l.enqueue(more) == 5);
    std::list<int> all = l.drain();
    std::vector<int> got(all.begin(), all.end());
    CHECK(got == std::vector<int>{0, 1, 2, 3, 4, 5, 6});
    CHECK(l.drain().empty());
}

TEST_CASE("SyncedList: an empty batch changes nothing", "[unit][syncedlist]")
{
    SyncedList<int> l;
    std::list<int> none;
    CHECK(l.enqueue(none) == 0);
    CHECK(l.size() == 0);
    int x;
    CHECK_FALSE(l.pop(&x, 10ms));
}

TEST_CASE("SyncedList: timed pop times out on an empty list", "[unit][syncedlist]")
{
    SyncedList<int> l;
    int x = -1;
    auto t0 = std::chrono::steady_clock::now();
    CHECK_FALSE(l.pop(&x, 100ms));
    auto waited = std::chrono::steady_clock::now() - t0;
    CHECK(waited >= 100ms);
    CHECK(waited < 5s);
    CHECK(x == -1);
}

TEST_CASE("SyncedList: timed pop returns an item enqueued while waiting", "[unit][syncedlist]")
{
    SyncedList<int> l;
    int x = 0;
    std::thread producer([&l] {
        std::this_thread::sleep_for(50ms);
        l.enqueue(42);
    });
    CHECK(l.pop(&x, 5000ms));
    CHECK(x == 42);
    producer.join();
}

TEST_CASE("SyncedList: close releases every waiting thread", "[unit][syncedlist]")
{
    SyncedList<int> l;
    constexpr int n = 8;
    std::atomic<int> released{0}, got_item{0};
    std::vector<std::thread> waiters;
    for (int i = 0; i < n; ++i)
        waiters.emplace_back([&] {
            int x;
            if (l.pop(&x)) ++got_item;
            ++released;
        });
    std::this_thread::sleep_for(50ms);
    CHECK(released == 0);
    l.close();
    for (auto &t : waiters) t.join();
    CHECK(released == n);
    CHECK(got_item == 0);
    CHECK(l.closed());
}

TEST_CASE("SyncedList: items enqueued before close are still delivered", "[unit][syncedlist]")
{
    SyncedList<int> l;
    l.enqueue(7);
    l.enqueue(8);
    l.close();
    int x = 0;
    REQUIRE(l.pop(&x));
    CHECK(x == 7);
    REQUIRE(l.pop(&x, 10ms));
    CHECK(x == 8);
    CHECK_FALSE(l.pop(&x));
}

TEST_CASE("SyncedList: enqueue after close is a checked error", "[unit][syncedlist]")
{
    SyncedList<int> l;
    l.close();
    CHECK_THROWS_AS(l.enqueue(1), std::logic_error);
    std::list<int> b = {1};
    CHECK_THROWS_AS(l.enqueue(b), std::logic_error);
}

TEST_CASE("SyncedList: carries move-only items", "[unit][syncedlist]")
{
    SyncedList<std::unique_ptr<int>> l;
    l.enqueue(std::make_unique<int>(5));
    std::unique_ptr<int> p;
    REQUIRE(l.pop(&p));
    REQUIRE(p);
    CHECK(*p == 5);
}

TEST_CASE("SyncedList: many producers and consumers lose and duplicate nothing", "[unit][syncedlist]")
{
    SyncedList<int> l;
    constexpr int producers = 4, consumers = 4, per_producer = 20000, batch = 7;
    std::vector<std::vector<int>> taken(consumers);
    std::vector<std::thread> threads;
    for (int c = 0; c < consumers; ++c)
        threads.emplace_back([&, c] {
            int x;
            while (l.pop(&x)) taken[c].push_back(x);
        });
    std::vector<std::thread> makers;
    for (int p = 0; p < producers; ++p)
        makers.emplace_back([&, p] {
            int base = p * per_producer;
            for (int i = 0; i < per_producer;) {
                if (i % 3 == 0) {
                    l.enqueue(base + i);
                    ++i;
                } else {
                    std::list<int> b;
                    for (int k = 0; k < batch && i < per_producer; ++k, ++i) b.push_back(base + i);
                    l.enqueue(b);
                }
            }
        });
    for (auto &t : makers) t.join();
    l.close();
    for (auto &t : threads) t.join();

    std::vector<int> all;
    for (auto &v : taken) all.insert(all.end(), v.begin(), v.end());
    REQUIRE(all.size() == std::size_t(producers * per_producer));
    std::sort(all.begin(), all.end());
    for (int i = 0; i < producers * per_producer; ++i) REQUIRE(all[i] == i);
    // Each consumer saw each producer's items in the order they were made.
    for (auto &v : taken)
        for (int p = 0; p < producers; ++p) {
            int last = -1;
            for (int x : v)
                if (x / per_producer == p) {
                    REQUIRE(x > last);
                    last = x;
                }
        }
}

// ------------------------------------------------------------- addresses

TEST_CASE("get_addr and get_port split the three forms", "[unit][parse]")
{
    CHECK(get_addr("9001") == "");
    CHECK(get_port("9001") == "9001");
    CHECK(get_addr("10.0.0.5:6379") == "10.0.0.5");
    CHECK(get_port("10.0.0.5:6379") == "6379");
    CHECK(get_addr("example.org:80") == "example.org");
    CHECK(get_addr("[::1]:9001") == "::1");
    CHECK(get_port("[::1]:9001") == "9001");
    CHECK(get_addr("[fd00::6]:6379") == "fd00::6");
    CHECK(get_addr(":8080") == "");
    CHECK(get_port(":8080") == "8080");
}

TEST_CASE("parse_endpoint accepts valid places", "[unit][parse]")
{
    Endpoint e = parse_endpoint("127.0.0.1:65535", "destination");
    CHECK(e.host == "127.0.0.1");
    CHECK(e.port == 65535);
    CHECK(e.text == "127.0.0.1:65535");
    CHECK(parse_endpoint("1", "destination").port == 1);
    CHECK(parse_endpoint("[::1]:443", "destination").host == "::1");
}

TEST_CASE("parse_endpoint rejects every malformed place, naming it", "[unit][parse]")
{
    const char *bad[] = {"0", "70000", "65536", "-1", "abc", "9001:", "[::1", "[::1]", "[::1]9001",
                         "[]:80", ":", "", "::1:9001", "1:2:3", "123456", "80a", " 80", "host:"};
    for (const char *b : bad) {
        INFO("argument '" << b << "'");
        try {
            parse_endpoint(b, "destination");
            FAIL("accepted");
        } catch (const UsageError &e) {
            std::string m = e.what();
            CHECK(m.find(std::string("'") + b + "'") != std::string::npos);
            CHECK(m.find('\n') == std::string::npos);
        }
    }
}

TEST_CASE("printable escapes control characters and keeps the rest", "[unit][parse]")
{
    CHECK(printable("8080") == "8080");
    CHECK(printable("a\nb\tc\rd") == "a\\nb\\tc\\rd");
    CHECK(printable(std::string("x\0y", 3)) == "x\\x00y");
    CHECK(printable("\x1b[31m\x7f") == "\\x1b[31m\\x7f");
    CHECK(printable("h\xc3\xa9te") == "h\xc3\xa9te");  // UTF-8 stays
}

// Every input the fuzzers once broke a property with (tests/fuzz/regressions,
// named TARGET-WHAT) is replayed here: an endpoint input through the address
// parser, an args input (one argument per line) through parse_args. Either
// may be refused, but only with a UsageError of one printable line.
TEST_CASE("fuzz regressions: refused with one printable line, never worse", "[unit][parse][fuzz]")
{
    namespace fs = std::filesystem;
    const fs::path dir = "tests/fuzz/regressions";
    REQUIRE(fs::is_directory(dir));
    int replayed = 0;
    for (const auto &entry : fs::directory_iterator(dir)) {
        const std::string name = entry.path().filename().string();
        std::ifstream in(entry.path(), std::ios::binary);
        const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        INFO("input " << name << " (" << data.size() << " bytes)");
        std::string message;
        try {
            if (name.rfind("endpoint-", 0) == 0) {
                parse_endpoint(data, "listen address");
                parse_dest(data);
            } else if (name.rfind("args-", 0) == 0) {
                std::vector<std::string> args = {"iawlb"};
                std::string a;
                for (char ch : data + "\n")
                    if (ch == '\n' || ch == '\0') {
                        args.push_back(a);
                        a.clear();
                    } else {
                        a += ch;
                    }
                std::vector<const char *> argv;
                for (auto &x : args) argv.push_back(x.c_str());
                argv.push_back(nullptr);
                parse_args(int(args.size()), argv.data());
            } else {
                FAIL("a regression input must be named endpoint-* or args-*");
            }
        } catch (const UsageError &e) {
            message = e.what();
            CHECK(!message.empty());
        }
        INFO("message: " << message);
        CHECK(std::none_of(message.begin(), message.end(),
                           [](char ch) { return static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f; }));
        ++replayed;
    }
    CHECK(replayed > 0);
}

TEST_CASE("parse_duration and format_duration", "[unit][parse]")
{
    CHECK(parse_duration("250ms") == 250 * msec);
    CHECK(parse_duration("3s") == 3 * sec);
    CHECK(parse_duration("3") == 3 * sec);
    CHECK(parse_duration("2m") == 120 * sec);
    CHECK(parse_duration("1h") == 3600 * sec);
    CHECK(parse_duration("0") == 0);
    for (const char *b : {"", "s", "-1", "1.5s", "3x", "10 s", "1000000000", "ms5"})
        CHECK_THROWS_AS(parse_duration(b), std::invalid_argument);
    CHECK(format_duration(250 * msec) == "250ms");
    CHECK(format_duration(3 * sec) == "3s");
    CHECK(format_duration(300 * sec) == "5m");
    CHECK(format_duration(7200 * sec) == "2h");
    CHECK(format_duration(0) == "0s");
    CHECK(format_duration(1500) == "1500us");
}

namespace {
Config parse(std::vector<const char *> args)
{
    args.insert(args.begin(), "iawlb");
    return parse_args(int(args.size()), args.data());
}
std::string usage_error(std::vector<const char *> args)
{
    try {
        parse(args);
    } catch (const UsageError &e) {
        return e.what();
    }
    return "";
}
}  // namespace

TEST_CASE("parse_args: defaults and every option", "[unit][parse]")
{
    Config c = parse({"8080", "9001", "127.0.0.1:9002", "[::1]:9003"});
    CHECK(c.listen.port == 8080);
    CHECK(c.listen.host.empty());
    REQUIRE(c.dests.size() == 3);
    CHECK(c.dests[2].host == "::1");
    CHECK(c.workers == 0);
    CHECK(c.max_conn == 0);
    CHECK(c.algorithm == Algorithm::leastconn);
    CHECK(c.connect_timeout == 3 * sec);
    CHECK(c.idle_timeout == 300 * sec);
    CHECK(c.queue_timeout == 10 * sec);
    CHECK(c.grace == 30 * sec);
    CHECK(c.backoff_max == 5 * sec);
    CHECK_FALSE(c.verbose);

    c = parse({"-w", "4", "--max-conn=100", "-a", "roundrobin", "--connect-timeout", "500ms",
               "--idle-timeout=0", "--queue-timeout", "1m", "--grace", "0", "--backoff-max", "2s",
               "-v", "127.0.0.1:8080", "9001"});
    CHECK(c.workers == 4);
    CHECK(c.max_conn == 100);
    CHECK(c.algorithm == Algorithm::roundrobin);
    CHECK(c.connect_timeout == 500 * msec);
    CHECK(c.idle_timeout == 0);
    CHECK(c.queue_timeout == 60 * sec);
    CHECK(c.grace == 0);
    CHECK(c.backoff_max == 2 * sec);
    CHECK(c.verbose);
    CHECK(c.listen.host == "127.0.0.1");

    CHECK(parse({"-w8", "80", "81"}).workers == 8);
    CHECK(parse({"80", "--", "81"}).dests.size() == 1);
    CHECK(parse({"--help", "--bogus"}).help);
    CHECK(parse({"-V"}).version);
}

TEST_CASE("parse_args: every malformed argument is named in one line", "[unit][parse]")
{
    struct Case {
        std::vector<const char *> args;
        const char *named;
    };
    const Case cases[] = {
        {{"0", "9001"}, "0"},
        {{"70000", "9001"}, "70000"},
        {{"-1", "9001"}, "-1"},
        {{"abc", "9001"}, "abc"},
        {{"9000", "9001:"}, "9001:"},
        {{"9000", "[::1"}, "[::1"},
        {{"--bogus", "9000", "9001"}, "--bogus"},
        {{"-w", "0", "9000", "9001"}, "0"},
        {{"-w", "abc", "9000", "9001"}, "abc"},
        {{"-w", "2000", "9000", "9001"}, "2000"},
        {{"--idle-timeout", "xyz", "9000", "9001"}, "xyz"},
        {{"--connect-timeout", "0", "9000", "9001"}, "--connect-timeout"},
        {{"--algorithm", "bogus", "9000", "9001"}, "bogus"},
        {{"9000", "9001", "-w"}, "-w"},
        {{"-v=1", "9000", "9001"}, "-v"},
        {{"9000"}, "9000"},
    };
    for (const Case &c : cases) {
        std::string m = usage_error(c.args);
        INFO("args starting with '" << c.args[0] << "': message '" << m << "'");
        REQUIRE_FALSE(m.empty());
        CHECK(m.find(c.named) != std::string::npos);
        CHECK(m.find('\n') == std::string::npos);
    }
    CHECK_FALSE(usage_error({}).empty());
}

// ------------------------------------------------------------- balancing

namespace {
SockAddr loopback(std::uint16_t port)
{
    SockAddr a;
    a.in4.sin_family = AF_INET;
    a.in4.sin_port = htons(port);
    a.in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.len = sizeof a.in4;
    return a;
}
void fill(Pool &p, int n)
{
    for (int i = 0; i < n; ++i) p.add(loopback(std::uint16_t(9001 + i)));
}
}  // namespace

TEST_CASE("backoff doubles from 250 ms up to the cap", "[unit][pool]")
{
    CHECK(backoff(1, 5 * sec) == 250 * msec);
    CHECK(backoff(2, 5 * sec) == 500 * msec);
    CHECK(backoff(3, 5 * sec) == 1 * sec);
    CHECK(backoff(5, 5 * sec) == 4 * sec);
    CHECK(backoff(6, 5 * sec) == 5 * sec);
    CHECK(backoff(1000000, 5 * sec) == 5 * sec);
    CHECK(backoff(1, 100 * msec) == 100 * msec);
    CHECK(backoff(4000000000u, 10 * sec) == 10 * sec);
}

TEST_CASE("Pool: names are the resolved addresses", "[unit][pool]")
{
    Pool p;
    fill(p, 2);
    CHECK(p.size() == 2);
    CHECK(p[0].name == "127.0.0.1:9001");
    CHECK(p[1].name == "127.0.0.1:9002");
}

TEST_CASE("Pool: short connections spread evenly, both algorithms", "[unit][pool]")
{
    for (Algorithm a : {Algorithm::leastconn, Algorithm::roundrobin}) {
        Pool p;
        p.algorithm = a;
        fill(p, 3);
        std::vector<int> count(3);
        for (int i = 0; i < 30; ++i) {
            Pick k = p.pick(0);
            REQUIRE(k.dest >= 0);
            CHECK(k.dest == i % 3);
            ++count[k.dest];
            p.connected(k.dest);
            p.release(k.dest);
        }
        CHECK(count == std::vector<int>{10, 10, 10});
    }
}

TEST_CASE("Pool: least connections avoids the busy destination", "[unit][pool]")
{
    Pool p;
    fill(p, 3);
    // Hold five connections on destination 0.
    for (int i = 0; i < 5; ++i) {
        Pick k = p.pick(0);
        REQUIRE(k.dest >= 0);
        if (k.dest != 0) p.release(k.dest);
    }
    int held = int(p.active(0));
    REQUIRE(held >= 1);
    // New short connections go to 1 and 2 until they reach the same count.
    for (int i = 0; i < 10; ++i) {
        Pick k = p.pick(0);
        CHECK(k.dest != 0);
        p.release(k.dest);
    }
    Pool r;
    r.algorithm = Algorithm::roundrobin;
    fill(r, 2);
    Pick a = r.pick(0), b = r.pick(0), c = r.pick(0);
    CHECK(a.dest == 0);
    CHECK(b.dest == 1);
    CHECK(c.dest == 0);  // round robin ignores the load
}

TEST_CASE("Pool: a failed destination is skipped, then tried once after its backoff", "[unit][pool]")
{
    Pool p;
    fill(p, 2);
    Time now = 1000 * sec;
    Pick k = p.pick(now);
    REQUIRE(k.dest == 0);
    Time wait = 0;
    CHECK_FALSE(k.trial);
    CHECK(p.failed(0, now, &wait, k.trial) == Change::down);
    CHECK(wait == 250 * msec);
    CHECK(p.is_down(0));
    CHECK(p.active(0) == 0);
    // While it is down, everything goes to 1.
    for (int i = 0; i < 5; ++i) {
        Pick q = p.pick(now + 100 * msec);
        CHECK(q.dest == 1);
        p.release(q.dest);
    }
    // After the backoff, exactly one client is sent to test it.
    Pick trial = p.pick(now + 300 * msec);
    Pick other = p.pick(now + 300 * msec);
    CHECK(((trial.dest == 0) != (other.dest == 0)));
    Pick& t = trial.dest == 0 ? trial : other;
    CHECK(t.trial);
    // The trial fails again: the wait doubles and the state does not change.
    CHECK(p.failed(0, now + 300 * msec, &wait, t.trial) == Change::none);
    CHECK(wait == 500 * msec);
    // The next trial succeeds: the destination is up again.
    Pick again = p.pick(now + 900 * msec);
    while (again.dest != 0) {
        p.release(again.dest);
        again = p.pick(now + 900 * msec);
    }
    CHECK(p.connected(0) == Change::up);
    CHECK_FALSE(p.is_down(0));
    CHECK(p[0].failed == 2);
}

TEST_CASE("Pool: with every destination down, pick says when to ask again", "[unit][pool]")
{
    Pool p;
    p.backoff_cap = 10 * sec;
    fill(p, 2);
    Time now = 50 * sec, wait = 0;
    Pick a = p.pick(now), b = p.pick(now);
    p.failed(a.dest, now, &wait, a.trial);
    p.failed(b.dest, now + 100 * msec, &wait, b.trial);
    Pick none = p.pick(now + 200 * msec);
    CHECK(none.dest == -1);
    CHECK(none.retry_at == now + 250 * msec);
    // A trial in flight makes the answer at most 50 ms away.
    Pick trial = p.pick(now + 260 * msec);
    REQUIRE(trial.dest >= 0);
    Pick later = p.pick(now + 270 * msec);
    CHECK(later.dest == -1);
    CHECK(later.retry_at <= now + 270 * msec + 50 * msec);
    // Abandoning the trial does not blame the destination.
    p.abandon(trial.dest, trial.trial);
    CHECK(p.pick(now + 280 * msec).dest == trial.dest);
}

TEST_CASE("Pool: a late failure neither ends the trial nor extends the backoff", "[unit][pool]")
{
    // Connects picked while the destination was up, failing after it went down.
    Pool p;
    p.backoff_cap = 60 * sec;
    fill(p, 1);
    Time now = 10 * sec, wait = 0;
    std::vector<Pick> in_flight;
    for (int i = 0; i < 8; ++i) in_flight.push_back(p.pick(now));
    for (const Pick& k : in_flight) CHECK_FALSE(k.trial);
    CHECK(p.failed(0, now, &wait, false) == Change::down);
    CHECK(wait == 250 * msec);
    for (size_t i = 1; i < 4; ++i) {
        CHECK(p.failed(0, now + 10 * msec, &wait, false) == Change::none);
        CHECK(wait <= 250 * msec);  // the first failure's verdict stands
    }
    // The trial, then the other late failures while it runs.
    Pick trial = p.pick(now + 300 * msec);
    REQUIRE(trial.dest == 0);
    CHECK(trial.trial);
    for (size_t i = 4; i < 7; ++i) p.failed(0, now + 310 * msec, &wait, false);
    p.abandon(0, false);  // the last late one: its client left
    CHECK(p.pick(now + 320 * msec).dest == -1);  // still one trial only
    CHECK(p.active(0) == 1);
    // The trial fails: the second failure of the destination, 500 ms.
    CHECK(p.failed(0, now + 400 * msec, &wait, true) == Change::none);
    CHECK(wait == 500 * msec);
    CHECK(p[0].failed == 8);
}

TEST_CASE("Pool: a failure picked before the destination came back is a late one", "[unit][pool]")
{
    // Seen in one loaded gate run: a connect picked while the destination was first up
    // timed out after it had gone down and come back, and marked it down again.
    Pool p;
    fill(p, 1);
    Time now = 10 * sec, wait = 0;
    Pick a = p.pick(now), b = p.pick(now);
    REQUIRE(a.dest == 0);
    REQUIRE(b.dest == 0);
    CHECK(a.epoch == b.epoch);
    bool freed = false;
    CHECK(p.failed(0, now, &wait, a.trial, &freed, long(a.epoch)) == Change::down);
    Pick trial = p.pick(now + wait);
    REQUIRE(trial.trial);
    CHECK(trial.epoch != b.epoch);
    CHECK(p.connected(0) == Change::up);
    // b's connect fails now: counted, but the destination stays up and usable.
    CHECK(p.failed(0, now + wait + msec, &wait, b.trial, &freed, long(b.epoch)) == Change::none);
    CHECK_FALSE(p.is_down(0));
    CHECK(p[0].failed == 2);
    Pick c = p.pick(now + wait + 2 * msec);
    CHECK(c.dest == 0);
    CHECK_FALSE(c.trial);
    // A failure picked in the current epoch still counts.
    CHECK(p.failed(0, now + wait + 3 * msec, &wait, c.trial, &freed, long(c.epoch)) == Change::down);
}

// ------------------------------------------------------------- operations

TEST_CASE("parse_args: the operations options", "[unit][parse][ops]")
{
    Config c = parse({"8080", "9001@3", "[::1]:9002@256", "127.0.0.1:9003"});
    REQUIRE(c.dests.size() == 3);
    CHECK(c.dests[0].weight == 3);
    CHECK(c.dests[0].port == 9001);
    CHECK(c.dests[1].weight == 256);
    CHECK(c.dests[1].host == "::1");
    CHECK(c.dests[2].weight == 1);
    CHECK(c.check_interval == 0);
    CHECK(c.rise == 2);
    CHECK(c.fall == 3);
    CHECK(c.queue_max == 0);
    CHECK_FALSE(c.stats);
    CHECK(c.proxy == Proxy::none);
    CHECK_FALSE(c.reuseport);

    c = parse({"--check-interval", "250ms", "--rise=1", "--fall", "5", "--queue-max", "7",
               "--stats", "9100", "--send-proxy-v2", "--reuseport", "80", "81"});
    CHECK(c.check_interval == 250 * msec);
    CHECK(c.rise == 1);
    CHECK(c.fall == 5);
    CHECK(c.queue_max == 7);
    REQUIRE(c.stats);
    CHECK(c.stats->host == "127.0.0.1");  // a bare port is loopback only
    CHECK(c.stats->port == 9100);
    CHECK(c.proxy == Proxy::v2);
    CHECK(c.reuseport);
    CHECK(parse({"--stats", "[::1]:9100", "80", "81"}).stats->host == "::1");
    CHECK(parse({"--send-proxy", "--send-proxy", "80", "81"}).proxy == Proxy::v1);

    const std::vector<std::vector<const char *> > bad = {
        {"80", "81@0"}, {"80", "81@257"}, {"80", "81@"}, {"80", "81@x"}, {"80", "81@1.5"},
        {"80", "81@-1"}, {"80@2", "81"}, {"--rise", "0", "80", "81"}, {"--fall", "x", "80", "81"},
        {"--check-interval", "soon", "80", "81"}, {"--queue-max", "-1", "80", "81"},
        {"--stats", "0", "80", "81"}, {"--send-proxy", "--send-proxy-v2", "80", "81"},
        {"--reuseport=1", "80", "81"},
    };
    for (const auto &args : bad) {
        std::string m = usage_error(args);
        INFO("args " << args[0] << " " << args[1] << ": message '" << m << "'");
        CHECK_FALSE(m.empty());
        CHECK(m.find('\n') == std::string::npos);
    }
    CHECK(usage_error({"80", "81@0"}).find("81@0") != std::string::npos);
}

// A client address for acl_admits: an IPv4 or IPv6 literal, with any port.
static SockAddr client(const char *text)
{
    SockAddr a;
    if (inet_pton(AF_INET, text, &a.in4.sin_addr) == 1) {
        a.in4.sin_family = AF_INET;
        a.len = sizeof a.in4;
    } else {
        REQUIRE(inet_pton(AF_INET6, text, &a.in6.sin6_addr) == 1);
        a.in6.sin6_family = AF_INET6;
        a.len = sizeof a.in6;
    }
    return a;
}

TEST_CASE("access rules: parsing, first match decides, any --allow refuses the rest", "[unit][parse][acl]")
{
    const Config none = parse({"80", "81"});
    CHECK(none.acl.empty());
    CHECK(acl_admits(none.acl, client("192.0.2.1")));

    const Config c = parse({"--deny", "10.1.2.0/25", "--allow=10.0.0.0/8", "--allow", "2001:db8::/32",
                            "--deny", "::1", "80", "81"});
    REQUIRE(c.acl.size() == 4);
    CHECK_FALSE(c.acl[0].allow);
    CHECK(c.acl[0].bits == 25);
    CHECK(c.acl[1].allow);
    CHECK(c.acl[2].family == AF_INET6);
    CHECK(c.acl[3].bits == 128);  // a bare address is a network of one

    CHECK_FALSE(acl_admits(c.acl, client("10.1.2.0")));    // the deny comes first
    CHECK_FALSE(acl_admits(c.acl, client("10.1.2.127")));  // last address of the /25
    CHECK(acl_admits(c.acl, client("10.1.2.128")));        // just outside it: the allow
    CHECK(acl_admits(c.acl, client("10.255.255.255")));
    CHECK_FALSE(acl_admits(c.acl, client("11.0.0.0")));    // no rule: refused, as an allow exists
    CHECK(acl_admits(c.acl, client("2001:db8:ffff::1")));
    CHECK_FALSE(acl_admits(c.acl, client("2001:db9::1")));
    CHECK_FALSE(acl_admits(c.acl, client("::1")));
    // An IPv4 client on a [::] listener arrives IPv4-mapped, and is matched as IPv4.
    CHECK(acl_admits(c.acl, client("::ffff:10.9.9.9")));
    CHECK_FALSE(acl_admits(c.acl, client("::ffff:10.1.2.3")));
    CHECK_FALSE(acl_admits(c.acl, client("::ffff:11.0.0.1")));

    // Only denies: everything else is admitted. /0 matches every address of its family.
    const Config d = parse({"--deny", "127.0.0.2", "--deny", "::/0", "80", "81"});
    CHECK_FALSE(acl_admits(d.acl, client("127.0.0.2")));
    CHECK(acl_admits(d.acl, client("127.0.0.1")));
    CHECK_FALSE(acl_admits(d.acl, client("2001:db8::7")));
    CHECK(acl_admits(parse({"--allow", "0.0.0.0/0", "80", "81"}).acl, client("203.0.113.9")));

    const std::vector<std::vector<const char *> > bad = {
        {"--allow", "10.0.0.1/8", "80", "81"},   // bits set beyond the prefix
        {"--allow", "10.0.0.0/33", "80", "81"},  {"--deny", "::/129", "80", "81"},
        {"--deny", "10.0.0.0/", "80", "81"},     {"--deny", "10.0.0.0/x", "80", "81"},
        {"--allow", "300.0.0.1", "80", "81"},    {"--allow", "example.com", "80", "81"},
        {"--allow", "", "80", "81"},             {"--deny", "[::1]", "80", "81"},
        {"--allow", "10.0.0.0/-1", "80", "81"},  {"--allow", "80", "81"},
    };
    for (const auto &args : bad) {
        std::string m = usage_error(args);
        INFO("args " << args[0] << " " << args[1] << ": message '" << m << "'");
        CHECK_FALSE(m.empty());
        CHECK(m.find('\n') == std::string::npos);
    }
    CHECK(usage_error({"--allow", "10.0.0.1/8", "80", "81"}).find("10.0.0.1/8") != std::string::npos);
    CHECK(parse({"--slow-start", "30s", "80", "81"}).slow_start == 30 * sec);
    CHECK(parse({"80", "81"}).slow_start == 0);
}

// The destination that `p` picks for each of `n` client addresses 10.x.y.z (and
// one IPv6 client per 16), each connection released at once.
static std::vector<int> affinity(Pool &p, int n, Time now)
{
    std::vector<int> dest;
    for (int i = 0; i < n; ++i) {
        SockAddr a;
        if (i % 16 == 15) {
            a.in6.sin6_family = AF_INET6;
            a.in6.sin6_addr.s6_addr[0] = 0x20;
            a.in6.sin6_addr.s6_addr[1] = 0x01;
            std::memcpy(&a.in6.sin6_addr.s6_addr[12], &i, sizeof i);
            a.len = sizeof a.in6;
        } else {
            a.in4.sin_family = AF_INET;
            a.in4.sin_addr.s_addr = htonl(0x0a000000u + std::uint32_t(i) * 2654435761u % 0x00ffffffu);
            a.in4.sin_port = htons(std::uint16_t(1024 + i));  // the port must not matter
            a.len = sizeof a.in4;
        }
        Pick k = p.pick(now, &a);
        dest.push_back(k.dest);
        if (k.dest >= 0) p.release(k.dest);
    }
    return dest;
}

TEST_CASE("Pool: source affinity is a consistent hash; a destination that leaves moves only its clients",
          "[unit][pool][affinity]")
{
    const int n = 20000;
    const Time t0 = 1000 * sec;
    Pool p;
    p.algorithm = Algorithm::source;
    fill(p, 5);
    const std::vector<int> before = affinity(p, n, t0);
    CHECK(affinity(p, n, t0 + sec) == before);  // the same client, the same destination
    std::vector<int> share(5, 0);
    for (int d : before) {
        REQUIRE(d >= 0);
        ++share[std::size_t(d)];
    }
    for (int k = 0; k < 5; ++k) {
        INFO("destination " << k << ": " << share[std::size_t(k)] << " of " << n);
        CHECK(share[std::size_t(k)] > n / 5 * 6 / 10);  // about a fifth each
        CHECK(share[std::size_t(k)] < n / 5 * 14 / 10);
    }

    // Destination 2 goes down: exactly its clients move, and none to it.
    Time wait = 0;
    Pick k = p.pick(t0);  // without an address: the rotation, for a connect that fails
    while (k.dest != 2) {
        p.release(k.dest);
        k = p.pick(t0);
    }
    p.failed(2, t0, &wait, k.trial);
    const std::vector<int> down = affinity(p, n, t0 + wait / 2);
    int moved = 0;
    for (int i = 0; i < n; ++i) {
        if (before[std::size_t(i)] == 2) {
            CHECK(down[std::size_t(i)] != 2);
            ++moved;
        } else if (down[std::size_t(i)] != before[std::size_t(i)]) {
            FAIL("client " << i << " moved from " << before[std::size_t(i)] << " to " << down[std::size_t(i)]);
        }
    }
    CHECK(moved == share[2]);

    // It comes back (its trial succeeds): every client is where it was.
    const Time later = t0 + 10 * wait;
    k = p.pick(later, nullptr);
    while (!k.trial) {
        p.release(k.dest);
        k = p.pick(later, nullptr);
    }
    REQUIRE(k.dest == 2);
    p.connected(2);
    p.release(2);
    CHECK(affinity(p, n, later) == before);

    // A sixth destination takes about a sixth of the clients, from every other one.
    Pool q;
    q.algorithm = Algorithm::source;
    fill(q, 6);
    const std::vector<int> six = affinity(q, n, t0);
    int to_new = 0;
    for (int i = 0; i < n; ++i) {
        if (six[std::size_t(i)] == 5) ++to_new;
        else CHECK(six[std::size_t(i)] == before[std::size_t(i)]);
    }
    INFO(to_new << " of " << n << " clients moved to the sixth destination");
    CHECK(to_new > n / 6 * 6 / 10);
    CHECK(to_new < n / 6 * 14 / 10);
}

TEST_CASE("Pool: source affinity follows weights; DEST@2 and DEST DEST are the same ring", "[unit][pool][affinity]")
{
    const int n = 20000;
    Pool a, b;
    a.algorithm = b.algorithm = Algorithm::source;
    a.add(loopback(9001), 3);
    a.add(loopback(9002), 1);
    b.add(loopback(9001), 1);
    b.add(loopback(9002), 1);
    b.add(loopback(9001), 2);
    const std::vector<int> da = affinity(a, n, sec), db = affinity(b, n, sec);
    CHECK(da == db);
    const long first = std::count(da.begin(), da.end(), 0);
    INFO(first << " of " << n << " clients on the destination of weight 3");
    CHECK(first > n * 65 / 100);
    CHECK(first < n * 85 / 100);

    // With every destination down, no destination and a time to ask again.
    Pool c;
    c.algorithm = Algorithm::source;
    fill(c, 1);
    Time wait = 0;
    Pick k = c.pick(sec);
    c.failed(k.dest, sec, &wait, k.trial);
    SockAddr x = loopback(1);
    Pick none = c.pick(sec, &x);
    CHECK(none.dest == -1);
    CHECK(none.retry_at == sec + wait);
}

// How many of `n` short connections, picked at time `t`, go to destination 1.
static int picks_of_1(Pool &p, int n, Time t)
{
    int ones = 0;
    for (int i = 0; i < n; ++i) {
        Pick k = p.pick(t);
        REQUIRE(k.dest >= 0);
        ones += k.dest == 1;
        p.release(k.dest);
    }
    return ones;
}

TEST_CASE("Pool: slow start (--slow-start): a destination that comes back gets a share that grows to its weight",
          "[unit][pool][slowstart]")
{
    for (Algorithm a : {Algorithm::leastconn, Algorithm::roundrobin}) {
        for (Time slow : {Time(0), 10 * sec}) {
            INFO((a == Algorithm::leastconn ? "leastconn" : "roundrobin") << ", slow start " << slow / sec << " s");
            Pool p;
            p.algorithm = a;
            p.slow_start = slow;
            fill(p, 2);
            // Up from the start: no slow start, the clients alternate.
            CHECK(picks_of_1(p, 1000, now_us()) == 500);

            // Destination 1 fails, then its trial succeeds: it is back, as of now_us().
            Time t = now_us(), wait = 0;
            Pick k = p.pick(t);
            while (k.dest != 1) {
                p.release(k.dest);
                k = p.pick(t);
            }
            p.failed(1, t, &wait, k.trial);
            k = p.pick(t + wait);
            while (!k.trial) {
                p.release(k.dest);
                k = p.pick(t + wait);
            }
            REQUIRE(k.dest == 1);
            const Time back = now_us();
            p.connected(1);
            p.release(1);

            if (slow == 0) {
                CHECK(picks_of_1(p, 1000, back + sec) == 500);
                continue;
            }
            // A tenth of the way: shares 100 and 1000 thousandths, 1 client in 11.
            int tenth = picks_of_1(p, 1100, back + slow / 10 + msec);
            CHECK(tenth >= 98);
            CHECK(tenth <= 102);
            // Halfway: 500 and 1000, 1 in 3.
            int half = picks_of_1(p, 1500, back + slow / 2 + msec);
            CHECK(half >= 498);
            CHECK(half <= 502);
            // After D: equal again.
            CHECK(picks_of_1(p, 1000, back + slow + msec) == 500);
        }
    }
}

TEST_CASE("Pool: a backup gets clients only while no primary is usable", "[unit][pool][backup]")
{
    for (Algorithm a : {Algorithm::leastconn, Algorithm::roundrobin, Algorithm::source}) {
        INFO("algorithm " << int(a));
        Pool p;
        p.algorithm = a;
        p.add(loopback(9001));
        p.add(loopback(9002));
        CHECK(p.add(loopback(9003), 1, true) == 2);
        CHECK(p[2].backup);
        SockAddr client = loopback(40000);
        const Time t = 1000 * sec;
        auto tally = [&](Time now) {
            std::vector<int> n(3, 0);
            for (int i = 0; i < 60; ++i) {
                client.in4.sin_addr.s_addr = htonl(0x0a000000u + std::uint32_t(i) * 7919u);
                Pick k = p.pick(now, &client);
                if (k.dest < 0) continue;
                ++n[std::size_t(k.dest)];
                if (k.trial) p.connected(k.dest);  // the primary's trial succeeds
                p.release(k.dest);
            }
            return n;
        };
        std::vector<int> n = tally(t);
        CHECK(n[2] == 0);
        CHECK(n[0] + n[1] == 60);

        // Both primaries fail: every client goes to the backup.
        Time wait0 = 0, wait1 = 0;
        for (int d : {0, 1}) {
            Pick k = p.pick(t);
            while (k.dest != d) {
                p.release(k.dest);
                k = p.pick(t);
            }
            p.failed(d, t, d == 0 ? &wait0 : &wait1, k.trial);
        }
        n = tally(t + msec);
        CHECK(n[2] == 60);

        // Their backoff over, the first client tests one primary and the rest follow it back.
        n = tally(t + 10 * sec);
        CHECK(n[2] <= 1);  // at most the client picked while both primaries' trials ran
        CHECK(n[0] + n[1] + n[2] == 60);
        n = tally(t + 11 * sec);
        CHECK(n[2] == 0);
    }
    // Given both ways, a destination is one, and a primary.
    Pool q;
    q.add(loopback(9001), 1, true);
    CHECK(q.add(loopback(9001), 1, false) == 0);
    CHECK_FALSE(q[0].backup);
    CHECK(parse({"--backup", "9003@2", "80", "81"}).dests.size() == 2);
    CHECK(parse({"--backup", "9003@2", "80", "81"}).dests[1].backup);
    CHECK(parse({"--backup", "9003@2", "80", "81"}).dests[1].weight == 2);
    CHECK_FALSE(parse({"80", "81"}).dests[0].backup);
}

TEST_CASE("Pool: a destination's limit (--dest-max-conn): full ones are passed over, a freed place is reported",
          "[unit][pool][dest-limit]")
{
    for (Algorithm a : {Algorithm::leastconn, Algorithm::roundrobin, Algorithm::source}) {
        INFO("algorithm " << int(a));
        Pool p;
        p.algorithm = a;
        p.max_active = 2;
        p.add(loopback(9001));
        p.add(loopback(9002));
        const Time t = 1000 * sec;
        SockAddr client = loopback(40000);
        client.in4.sin_addr.s_addr = htonl(0x0a000001u);

        // Four picks fill both destinations; a fifth is refused, with no time to ask again.
        std::vector<int> held;
        for (int i = 0; i < 4; ++i) {
            Pick k = p.pick(t, &client);
            REQUIRE(k.dest >= 0);
            held.push_back(k.dest);
        }
        CHECK(p.active(0) == 2);
        CHECK(p.active(1) == 2);
        Pick none = p.pick(t, &client);
        CHECK(none.dest == -1);
        CHECK(none.retry_at == forever);

        // Releasing one reports the freed place; the next pick takes it; the one after waits.
        CHECK(p.release(held[0]) == true);
        Pick k = p.pick(t, &client);
        CHECK(k.dest == held[0]);
        CHECK(p.pick(t, &client).dest == -1);

        // Below the limit, a release reports nothing.
        CHECK(p.release(k.dest) == true);
        CHECK(p.release(k.dest) == false);

        // A failed connect of a full destination reports the place, and the queue
        // then has a time to ask again: that destination's trial.
        k = p.pick(t, &client);  // fills it again
        Pick k2 = p.pick(t, &client);
        REQUIRE(k.dest >= 0);
        REQUIRE(k2.dest == k.dest);
        REQUIRE(p.pick(t, &client).dest == -1);
        const int d = k.dest;
        bool freed = false;
        Time wait = 0;
        p.failed(d, t, &wait, k2.trial, &freed);
        CHECK(freed);
        Pick after = p.pick(t, &client);
        CHECK(after.dest == -1);  // the other one is full, this one down
        CHECK(after.retry_at == t + wait);
        // The abandoned pick of a full destination reports the place too.
        const int other = 1 - d;
        CHECK(p.abandon(other, false) == true);
        CHECK(p.abandon(other, false) == false);
    }
}

TEST_CASE("Pool: with the primaries full and a backup due for its trial, the queue's time is never in the past",
          "[unit][pool][dest-limit]")
{
    // The queue asks again while now >= retry_at: a retry_at in the past would make it spin.
    Pool p;
    p.max_active = 1;
    p.add(loopback(9001));
    p.add(loopback(9003), 1, true);
    const Time t = 1000 * sec;
    // The backup fails once, while the primary is down, then the primary comes back and fills.
    Time wait = 0;
    Pick k = p.pick(t);
    REQUIRE(k.dest == 0);
    p.failed(0, t, &wait, k.trial);
    k = p.pick(t + msec);
    REQUIRE(k.dest == 1);
    p.failed(1, t + msec, &wait, k.trial);
    const Time later = t + 100 * sec;  // both are due for their trials
    k = p.pick(later);
    REQUIRE(k.dest == 0);  // the primary's trial
    p.connected(0);
    // The primary is full and up; the backup is down and due, but not in service.
    for (int i = 0; i < 3; ++i) {
        Pick r = p.pick(later + i * msec);
        CHECK(r.dest == -1);
        CHECK(r.retry_at > later + i * msec);
    }
    // The primary's connection ends: its place is free again, and it is picked.
    CHECK(p.release(0));
    CHECK(p.pick(later).dest == 0);
}

TEST_CASE("--dest-max-conn is a count, 0 for none", "[unit][args][dest-limit]")
{
    CHECK(parse({"--dest-max-conn", "64", "80", "81"}).dest_max_conn == 64);
    CHECK(parse({"--dest-max-conn=0", "80", "81"}).dest_max_conn == 0);
    CHECK(parse({"80", "81"}).dest_max_conn == 0);
    CHECK_THROWS_AS(parse({"--dest-max-conn", "-1", "80", "81"}), UsageError);
    CHECK_THROWS_AS(parse({"--dest-max-conn", "x", "80", "81"}), UsageError);
    CHECK_THROWS_AS(parse({"--dest-max-conn", "80"}), UsageError);
}

TEST_CASE("Pool: weights are followed exactly by round robin, and by least connections",
          "[unit][pool][ops]")
{
    for (Algorithm a : {Algorithm::roundrobin, Algorithm::leastconn}) {
        Pool p;
        p.algorithm = a;
        p.add(loopback(9001), 3);
        p.add(loopback(9002), 1);
        p.add(loopback(9003), 1);
        std::vector<int> order, count(3);
        for (int i = 0; i < 50; ++i) {
            Pick k = p.pick(0);
            REQUIRE(k.dest >= 0);
            order.push_back(k.dest);
            ++count[k.dest];
            p.connected(k.dest);
            p.release(k.dest);
        }
        CHECK(count == std::vector<int>{30, 10, 10});
        // Smooth: a, b, a, c, a, and again; never three in a row.
        CHECK(std::vector<int>(order.begin(), order.begin() + 5) == std::vector<int>{0, 1, 0, 2, 0});
    }
    // Long connections under least connections: held in proportion to the weights.
    Pool p;
    p.add(loopback(9001), 3);
    p.add(loopback(9002), 1);
    for (int i = 0; i < 40; ++i) REQUIRE(p.pick(0).dest >= 0);
    CHECK(p.active(0) == 30);
    CHECK(p.active(1) == 10);
}

TEST_CASE("Pool: health checks take a destination out after fall, back after rise",
          "[unit][pool][ops]")
{
    Pool p;
    fill(p, 2);
    Time now = 100 * sec;
    CHECK(p.check(0, false, 2, 3, now) == Change::none);
    CHECK(p.check(0, false, 2, 3, now) == Change::none);
    CHECK(p.check(0, true, 2, 3, now) == Change::none);  // a pass resets the streak
    CHECK(p.check(0, false, 2, 3, now) == Change::none);
    CHECK(p.check(0, false, 2, 3, now) == Change::none);
    CHECK(p.check(0, false, 2, 3, now + 1) == Change::down);
    CHECK(p.is_down(0));
    CHECK(p.snapshot(0).changed_at == now + 1);
    // Out: no client goes there, not even a trial, however long it waits.
    for (int i = 0; i < 5; ++i) {
        Pick k = p.pick(now + i * 60 * sec);
        CHECK(k.dest == 1);
        p.release(k.dest);
    }
    CHECK(p.check(0, true, 2, 3, now + 2) == Change::none);
    CHECK(p.check(0, true, 2, 3, now + 3) == Change::up);
    CHECK_FALSE(p.is_down(0));
    CHECK(p.snapshot(0).up);
    // Both markings: a failed connect keeps it down although checks pass.
    Time wait = 0;
    REQUIRE(p.pick(now + 4).dest == 0);
    CHECK(p.failed(0, now + 4, &wait, false) == Change::down);
    CHECK(p.check(0, true, 2, 3, now + 5) == Change::none);
    CHECK_FALSE(p.snapshot(0).up);
    // All out: pick says to ask again soon, since only the checker knows.
    Pool q;
    fill(q, 1);
    for (int i = 0; i < 3; ++i) q.check(0, false, 2, 3, now);
    Pick none = q.pick(now);
    CHECK(none.dest == -1);
    CHECK(none.retry_at <= now + 50 * msec);
}

namespace {
SockAddr v4(const char *ip, std::uint16_t port)
{
    SockAddr a;
    a.in4.sin_family = AF_INET;
    a.in4.sin_port = htons(port);
    inet_pton(AF_INET, ip, &a.in4.sin_addr);
    a.len = sizeof a.in4;
    return a;
}
SockAddr v6(const char *ip, std::uint16_t port)
{
    SockAddr a;
    a.in6.sin6_family = AF_INET6;
    a.in6.sin6_port = htons(port);
    inet_pton(AF_INET6, ip, &a.in6.sin6_addr);
    a.len = sizeof a.in6;
    return a;
}
}  // namespace

TEST_CASE("PROXY protocol headers, byte for byte", "[unit][proxy][ops]")
{
    CHECK(proxy_header(Proxy::v1, v4("192.0.2.1", 56324), v4("127.0.0.1", 443))
          == "PROXY TCP4 192.0.2.1 127.0.0.1 56324 443\r\n");
    CHECK(proxy_header(Proxy::v1, v6("2001:db8::1", 1), v6("::1", 65535))
          == "PROXY TCP6 2001:db8::1 ::1 1 65535\r\n");
    // An IPv4 client on a dual-stack listener is sent as IPv4.
    CHECK(proxy_header(Proxy::v1, v6("::ffff:10.1.2.3", 4000), v6("::ffff:127.0.0.1", 80))
          == "PROXY TCP4 10.1.2.3 127.0.0.1 4000 80\r\n");
    CHECK(proxy_header(Proxy::v1, v4("10.0.0.1", 1), v6("::1", 2)) == "PROXY UNKNOWN\r\n");

    const std::string sig("\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A", 12);
    std::string h = proxy_header(Proxy::v2, v4("192.0.2.1", 0x1234), v4("127.0.0.1", 443));
    std::string want = sig + std::string("\x21\x11\x00\x0C", 4)
        + std::string("\xC0\x00\x02\x01\x7F\x00\x00\x01\x12\x34\x01\xBB", 12);
    CHECK(h == want);
    h = proxy_header(Proxy::v2, v6("::1", 1), v6("2001:db8::2", 2));
    REQUIRE(h.size() == 16 + 36);
    CHECK(h.substr(0, 16) == sig + std::string("\x21\x21\x00\x24", 4));
    CHECK(h.substr(16, 16) == std::string(15, '\0') + "\x01");
    CHECK(h.substr(32, 16) == std::string("\x20\x01\x0d\xb8", 4) + std::string(11, '\0') + "\x02");
    CHECK(h.substr(48) == std::string("\x00\x01\x00\x02", 4));
    h = proxy_header(Proxy::v2, v6("::ffff:10.1.2.3", 4000), v6("::ffff:127.0.0.1", 80));
    CHECK(h.substr(12, 4) == std::string("\x21\x11\x00\x0C", 4));
}

// ------------------------------------------------------------- accepting the PROXY protocol

namespace {
const std::string kV2Signature("\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A", 12);

ProxyHeader parse_text(const std::string &s)
{
    return parse_proxy_header(s.data(), s.size());
}

// A version 2 header: the signature, the version/command and family/transport
// bytes, the length field `len` (big-endian), then `body` (which need not be
// `len` bytes long: a test may give less, or more).
std::string v2_raw(unsigned char ver_cmd, unsigned char fam_tr, std::size_t len, const std::string &body = "")
{
    std::string h = kV2Signature;
    h += char(ver_cmd);
    h += char(fam_tr);
    h += char((len >> 8) & 0xff);
    h += char(len & 0xff);
    return h + body;
}

// The address block of an INET (12 bytes) or INET6 (36 bytes) header.
std::string v2_block(const SockAddr &from, const SockAddr &to)
{
    std::string b;
    if (from.sa.sa_family == AF_INET) {
        b.append(reinterpret_cast<const char *>(&from.in4.sin_addr), 4);
        b.append(reinterpret_cast<const char *>(&to.in4.sin_addr), 4);
        b.append(reinterpret_cast<const char *>(&from.in4.sin_port), 2);
        b.append(reinterpret_cast<const char *>(&to.in4.sin_port), 2);
    } else {
        b.append(reinterpret_cast<const char *>(&from.in6.sin6_addr), 16);
        b.append(reinterpret_cast<const char *>(&to.in6.sin6_addr), 16);
        b.append(reinterpret_cast<const char *>(&from.in6.sin6_port), 2);
        b.append(reinterpret_cast<const char *>(&to.in6.sin6_port), 2);
    }
    return b;
}

// Family, address bytes and port; "" when they agree, else both spelled out.
std::string differs(const SockAddr &got, const SockAddr &want)
{
    bool same = got.sa.sa_family == want.sa.sa_family;
    if (same && want.sa.sa_family == AF_INET)
        same = got.in4.sin_port == want.in4.sin_port
               && std::memcmp(&got.in4.sin_addr, &want.in4.sin_addr, 4) == 0;
    else if (same && want.sa.sa_family == AF_INET6)
        same = got.in6.sin6_port == want.in6.sin6_port
               && std::memcmp(&got.in6.sin6_addr, &want.in6.sin6_addr, 16) == 0;
    else
        same = false;
    if (same) return "";
    return "got family " + std::to_string(got.sa.sa_family) + " " + addr_to_string(got) + ", want family "
           + std::to_string(want.sa.sa_family) + " " + addr_to_string(want);
}

const char *verdict_name(ProxyHeader::Verdict v)
{
    return v == ProxyHeader::ok ? "ok" : v == ProxyHeader::bad ? "bad" : "incomplete";
}

std::string visible(const std::string &s)
{
    return printable(s);
}

// Every proper prefix of `h` (including the empty one) is incomplete.
void check_prefixes_incomplete(const std::string &h)
{
    int wrong = 0;
    std::string first;
    for (std::size_t k = 0; k < h.size(); ++k) {
        ProxyHeader r = parse_proxy_header(h.data(), k);
        if (r.verdict != ProxyHeader::incomplete && wrong++ == 0)
            first = "prefix of " + std::to_string(k) + " bytes: " + verdict_name(r.verdict) + " (" + r.why + ")";
    }
    INFO("header '" << visible(h) << "': " << first);
    CHECK(wrong == 0);
}
}  // namespace

TEST_CASE("parse_proxy_header: version 1 TCP4, TCP6 and UNKNOWN", "[unit][proxy]")
{
    const std::string tcp4 = "PROXY TCP4 192.0.2.7 198.51.100.9 40000 8443\r\n";
    ProxyHeader h = parse_text(tcp4);
    REQUIRE(h.verdict == ProxyHeader::ok);
    CHECK(h.size == tcp4.size());
    CHECK(h.names_client);
    CHECK(differs(h.from, v4("192.0.2.7", 40000)) == "");
    CHECK(differs(h.to, v4("198.51.100.9", 8443)) == "");

    const std::string tcp6 = "PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n";
    h = parse_text(tcp6);
    REQUIRE(h.verdict == ProxyHeader::ok);
    CHECK(h.size == tcp6.size());
    CHECK(h.names_client);
    CHECK(differs(h.from, v6("2001:db8::7", 40000)) == "");
    CHECK(differs(h.to, v6("2001:db8::1", 443)) == "");

    // The extremes of a port: 0 (its only spelling with a zero first) and 65535.
    h = parse_text("PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n");
    REQUIRE(h.verdict == ProxyHeader::ok);
    CHECK(differs(h.from, v4("0.0.0.0", 0)) == "");
    CHECK(differs(h.to, v4("255.255.255.255", 65535)) == "");
    // An IPv4-mapped address is an IPv6 address for TCP6.
    h = parse_text("PROXY TCP6 ::ffff:10.1.2.3 ::1 1 2\r\n");
    REQUIRE(h.verdict == ProxyHeader::ok);
    CHECK(h.from.sa.sa_family == AF_INET6);

    // UNKNOWN, with or without the rest of the line: accepted, names nobody.
    const std::vector<std::string> unknowns = {
        "PROXY UNKNOWN\r\n", "PROXY UNKNOWN ffff:f:f:f:f:f:f:f ffff:f:f:f:f:f:f:f 65535 65535\r\n",
        "PROXY UNKNOWN anything at all, even  two spaces\r\n"};
    for (const std::string &unknown : unknowns) {
        INFO(visible(unknown));
        h = parse_text(unknown);
        CHECK(h.verdict == ProxyHeader::ok);
        CHECK(h.size == unknown.size());
        CHECK_FALSE(h.names_client);
    }

    // The longest line allowed is 107 bytes with its CR LF; one more is refused.
    const std::string longest = "PROXY TCP6 0000:0000:0000:0000:0000:ffff:255.255.255.255 "
                                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:f 65535 65535\r\n";
    REQUIRE(longest.size() == 107);
    h = parse_text(longest);
    CHECK(h.verdict == ProxyHeader::ok);
    CHECK(h.size == 107);
    const std::string too_long = "PROXY TCP6 0000:0000:0000:0000:0000:ffff:255.255.255.255 "
                                 "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff 65535 65535\r\n";
    REQUIRE(too_long.size() == 108);
    h = parse_text(too_long);
    CHECK(h.verdict == ProxyHeader::bad);
    CHECK(std::string(h.why) != "");
    const std::string unknown_long = "PROXY UNKNOWN " + std::string(100, 'x') + "\r\n";
    CHECK(parse_text(unknown_long).verdict == ProxyHeader::bad);
}

TEST_CASE("parse_proxy_header: every prefix of a header is incomplete, the whole one ok, what follows ignored",
          "[unit][proxy]")
{
    const SockAddr a4 = v4("192.0.2.7", 40000), b4 = v4("198.51.100.9", 8443);
    const SockAddr a6 = v6("2001:db8::7", 40000), b6 = v6("2001:db8::1", 443);
    const std::string headers[] = {
        "PROXY TCP4 192.0.2.7 198.51.100.9 40000 8443\r\n",
        "PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n",
        "PROXY UNKNOWN\r\n",
        "PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n",
        v2_raw(0x21, 0x11, 12, v2_block(a4, b4)),
        v2_raw(0x21, 0x21, 36, v2_block(a6, b6)),
        v2_raw(0x20, 0x00, 0),  // LOCAL
        v2_raw(0x21, 0x00, 0),  // PROXY, UNSPEC
    };
    // What a client may send after its header: text, binary, even another header.
    const std::string after[] = {
        "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        std::string("\0\r\n\xff\x01", 5) + std::string(300, 'z'),
        "PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n",
        kV2Signature + std::string("\x21\x11\x00\x0c", 4),
    };
    for (const std::string &h : headers) {
        INFO("header '" << visible(h) << "'");
        check_prefixes_incomplete(h);
        ProxyHeader whole = parse_text(h);
        REQUIRE(whole.verdict == ProxyHeader::ok);
        CHECK(whole.size == h.size());
        for (const std::string &more : after) {
            INFO("followed by '" << visible(more.substr(0, 40)) << "'");
            ProxyHeader r = parse_text(h + more);
            CHECK(r.verdict == ProxyHeader::ok);
            CHECK(r.size == h.size());
            CHECK(r.names_client == whole.names_client);
            if (r.names_client) {
                CHECK(differs(r.from, whole.from) == "");
                CHECK(differs(r.to, whole.to) == "");
            }
        }
    }
    // The prefixes of each signature alone are incomplete too (checked above through
    // the headers); a wrong byte anywhere in a signature decides at once.
    for (std::size_t k = 0; k < 12; ++k) {
        std::string s = kV2Signature + std::string(20, '\0');
        s[k] = char(s[k] ^ 0x20);
        INFO("signature with byte " << k << " changed");
        CHECK(parse_text(s).verdict == ProxyHeader::bad);
    }
}

TEST_CASE("parse_proxy_header: every malformed header is bad, with a reason", "[unit][proxy]")
{
    const SockAddr a4 = v4("192.0.2.7", 40000), b4 = v4("198.51.100.9", 8443);
    const SockAddr a6 = v6("2001:db8::7", 40000), b6 = v6("2001:db8::1", 443);
    const std::string block4 = v2_block(a4, b4), block6 = v2_block(a6, b6);
    const std::string t4 = "PROXY TCP4 192.0.2.7 198.51.100.9 ";
    struct Case {
        const char *what;
        std::string bytes;
    };
    const Case cases[] = {
        // neither signature
        {"HTTP", "GET / HTTP/1.0\r\n\r\n"},
        {"TLS hello", std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11)},
        {"lower case proxy", "proxy TCP4 192.0.2.7 198.51.100.9 40000 8443\r\n"},
        {"PROXY without its space", "PROXYTCP4 192.0.2.7 198.51.100.9 40000 8443\r\n"},
        {"a NUL first", std::string(40, '\0')},
        {"CR LF CR LF then text", "\r\n\r\nGET / HTTP/1.0\r\n\r\n"},
        // the line
        {"no CR before LF", t4 + "40000 8443\n"},
        {"a bare LF", "PROXY \n"},
        {"120 bytes without LF", "PROXY TCP4 " + std::string(109, '1')},
        {"107 bytes without LF", "PROXY TCP4 " + std::string(96, ' ')},
        {"CR LF after 200 bytes", "PROXY UNKNOWN " + std::string(186, 'x') + "\r\n"},
        // the words
        {"5 words", t4 + "40000\r\n"},
        {"7 words", t4 + "40000 8443 9\r\n"},
        {"a trailing space", t4 + "40000 8443 \r\n"},
        {"two spaces", "PROXY TCP4  192.0.2.7 198.51.100.9 40000 8443\r\n"},
        {"a tab", "PROXY TCP4\t192.0.2.7 198.51.100.9 40000 8443\r\n"},
        {"PROXY alone", "PROXY\r\n"},
        {"PROXY and a space", "PROXY \r\n"},
        // the protocol
        {"UDP4", "PROXY UDP4 192.0.2.7 198.51.100.9 40000 8443\r\n"},
        {"tcp4", "PROXY tcp4 192.0.2.7 198.51.100.9 40000 8443\r\n"},
        {"TCP5", "PROXY TCP5 192.0.2.7 198.51.100.9 40000 8443\r\n"},
        {"unknown", "PROXY unknown\r\n"},
        // the addresses
        {"TCP4 with IPv6 addresses", "PROXY TCP4 2001:db8::7 2001:db8::1 40000 443\r\n"},
        {"TCP6 with IPv4 addresses", "PROXY TCP6 192.0.2.7 198.51.100.9 40000 8443\r\n"},
        {"TCP4, an octet over 255", "PROXY TCP4 192.0.2.256 198.51.100.9 40000 8443\r\n"},
        {"TCP4, three octets", "PROXY TCP4 192.0.2 198.51.100.9 40000 8443\r\n"},
        {"TCP4, a name", "PROXY TCP4 localhost 198.51.100.9 40000 8443\r\n"},
        {"TCP4, bad destination", "PROXY TCP4 192.0.2.7 198.51.100.x 40000 8443\r\n"},
        {"TCP6, brackets", "PROXY TCP6 [2001:db8::7] 2001:db8::1 40000 443\r\n"},
        {"TCP6, a scope", "PROXY TCP6 fe80::1%eth0 2001:db8::1 40000 443\r\n"},
        // the ports
        {"port 65536", t4 + "65536 8443\r\n"},
        {"destination port 65536", t4 + "40000 65536\r\n"},
        {"port 99999", t4 + "99999 8443\r\n"},
        {"port of 6 digits", t4 + "100000 8443\r\n"},
        {"port 040000", t4 + "040000 8443\r\n"},
        {"port 0080", t4 + "0080 8443\r\n"},
        {"port 00", t4 + "00 8443\r\n"},
        {"port -1", t4 + "-1 8443\r\n"},
        {"port +80", t4 + "+80 8443\r\n"},
        {"port 8a", t4 + "8a 8443\r\n"},
        {"port 0x50", t4 + "0x50 8443\r\n"},
        {"empty port", t4 + " 8443\r\n"},
        {"empty destination port", t4 + "40000 \r\n"},
        // version 2
        {"v2 version 1", v2_raw(0x11, 0x11, 12, block4)},
        {"v2 version 0", v2_raw(0x01, 0x11, 12, block4)},
        {"v2 version 3", v2_raw(0x31, 0x11, 12, block4)},
        {"v2 version 15", v2_raw(0xf1, 0x11, 12, block4)},
        {"v2 command 2", v2_raw(0x22, 0x11, 12, block4)},
        {"v2 command 15", v2_raw(0x2f, 0x11, 12, block4)},
        {"v2 family 4", v2_raw(0x21, 0x41, 12, block4)},
        {"v2 family 15", v2_raw(0x21, 0xf1, 12, block4)},
        {"v2 transport 3", v2_raw(0x21, 0x13, 12, block4)},
        {"v2 transport 15", v2_raw(0x21, 0x1f, 12, block4)},
        {"v2 INET length 8", v2_raw(0x21, 0x11, 8, block4.substr(0, 8))},
        {"v2 INET length 11", v2_raw(0x21, 0x11, 11, block4.substr(0, 11))},
        {"v2 INET length 0", v2_raw(0x21, 0x11, 0)},
        {"v2 INET6 length 35", v2_raw(0x21, 0x21, 35, block6.substr(0, 35))},
        {"v2 INET6 length 12", v2_raw(0x21, 0x21, 12, block4)},
        {"v2 INET6 length 0", v2_raw(0x21, 0x21, 0)},
    };
    for (const Case &k : cases) {
        INFO(k.what << ": '" << visible(k.bytes) << "'");
        ProxyHeader h = parse_text(k.bytes);
        CHECK(verdict_name(h.verdict) == std::string("bad"));
        REQUIRE(h.why != nullptr);
        CHECK(std::string(h.why) != "");
        // Decided: more bytes change nothing.
        const std::string more = k.bytes + std::string(300, '\n');
        CHECK(parse_text(more).verdict == ProxyHeader::bad);
    }
}

TEST_CASE("parse_proxy_header: version 2 LOCAL, UNSPEC, UNIX and DGRAM keep the connection's addresses",
          "[unit][proxy]")
{
    const std::string block4 = v2_block(v4("192.0.2.7", 40000), v4("198.51.100.9", 8443));
    const std::string block6 = v2_block(v6("2001:db8::7", 40000), v6("2001:db8::1", 443));
    struct Case {
        const char *what;
        std::string header;  // without its length's worth of bytes
        std::size_t size;    // 16 + its length
    };
    const Case cases[] = {
        {"LOCAL, UNSPEC", v2_raw(0x20, 0x00, 0), 16},
        {"LOCAL, INET STREAM with addresses", v2_raw(0x20, 0x11, 12), 28},
        {"LOCAL, INET6 STREAM with addresses", v2_raw(0x20, 0x21, 36), 52},
        {"LOCAL, INET with a short length", v2_raw(0x20, 0x11, 4), 20},
        {"PROXY, UNSPEC", v2_raw(0x21, 0x00, 0), 16},
        {"PROXY, UNSPEC with 7 bytes", v2_raw(0x21, 0x00, 7), 23},
        {"PROXY, UNIX STREAM", v2_raw(0x21, 0x31, 216), 232},
        {"PROXY, UNIX DGRAM", v2_raw(0x21, 0x32, 216), 232},
        {"PROXY, INET DGRAM", v2_raw(0x21, 0x12, 12), 28},
        {"PROXY, INET6 DGRAM", v2_raw(0x21, 0x22, 36), 52},
    };
    for (const Case &k : cases) {
        INFO(k.what);
        check_prefixes_incomplete(k.header);  // the 16 fixed bytes are needed, no more
        ProxyHeader h = parse_text(k.header);
        CHECK(verdict_name(h.verdict) == std::string("ok"));
        CHECK(h.size == k.size);
        CHECK_FALSE(h.names_client);
        // With the rest of the header there (zeros, or address blocks), the same.
        std::string whole = k.header + (k.size == 28 ? block4 : k.size == 52 ? block6 : std::string(k.size - 16, '\0'));
        h = parse_text(whole + "after");
        CHECK(h.verdict == ProxyHeader::ok);
        CHECK(h.size == k.size);
        CHECK_FALSE(h.names_client);
    }
}

TEST_CASE("parse_proxy_header: version 2 TLVs are counted in the size, but not needed to decide", "[unit][proxy]")
{
    const SockAddr a = v4("192.0.2.7", 40000), b = v4("198.51.100.9", 8443);
    std::string tlvs;
    for (int i = 0; tlvs.size() < 1000; ++i) {  // NOOP TLVs (type 0x04), 1000 bytes in all
        const std::size_t value = std::min<std::size_t>(97, 1000 - tlvs.size() - 3);
        tlvs += '\x04';
        tlvs += char(value >> 8);
        tlvs += char(value & 0xff);
        tlvs += std::string(value, char('a' + i % 26));
    }
    REQUIRE(tlvs.size() == 1000);
    const std::string h = v2_raw(0x21, 0x11, 12 + 1000, v2_block(a, b) + tlvs);
    check_prefixes_incomplete(h.substr(0, 28));
    for (std::size_t n : {std::size_t(28), std::size_t(29), std::size_t(256), h.size(), h.size() + 1}) {
        INFO("given " << n << " bytes");
        std::string given = (h + "x").substr(0, n);
        ProxyHeader r = parse_text(given);
        REQUIRE(r.verdict == ProxyHeader::ok);
        CHECK(r.size == 16 + 12 + 1000);
        CHECK(r.names_client);
        CHECK(differs(r.from, a) == "");
        CHECK(differs(r.to, b) == "");
    }
    // INET6 with the largest length of all.
    const SockAddr a6 = v6("2001:db8::7", 40000), b6 = v6("2001:db8::1", 443);
    ProxyHeader r = parse_text(v2_raw(0x21, 0x21, 65535, v2_block(a6, b6)));
    REQUIRE(r.verdict == ProxyHeader::ok);
    CHECK(r.size == 16 + 65535);
    CHECK(differs(r.from, a6) == "");
    CHECK(differs(r.to, b6) == "");
}

TEST_CASE("parse_proxy_header: what proxy_header builds reads back as the same addresses", "[unit][proxy]")
{
    struct Pair {
        SockAddr from, to;
    };
    const Pair pairs[] = {
        {v4("192.0.2.1", 56324), v4("127.0.0.1", 443)},
        {v4("0.0.0.0", 0), v4("255.255.255.255", 65535)},
        {v4("10.1.2.3", 1), v4("10.1.2.3", 1)},
        {v6("2001:db8::1", 1), v6("::1", 65535)},
        {v6("::", 0), v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)},
        {v6("fe80::1:2:3:4", 12345), v6("2001:db8:0:0:1::1", 80)},
    };
    for (Proxy v : {Proxy::v1, Proxy::v2}) {
        for (const Pair &p : pairs) {
            const std::string h = proxy_header(v, p.from, p.to);
            INFO((v == Proxy::v1 ? "v1 " : "v2 ") << addr_to_string(p.from) << " -> " << addr_to_string(p.to)
                                                  << ": '" << visible(h) << "'");
            check_prefixes_incomplete(h);
            ProxyHeader r = parse_text(h + "payload");
            REQUIRE(r.verdict == ProxyHeader::ok);
            CHECK(r.size == h.size());
            CHECK(r.names_client);
            CHECK(differs(r.from, p.from) == "");
            CHECK(differs(r.to, p.to) == "");
        }
        // An IPv4 client of a dual-stack listener is sent, and so read back, as IPv4.
        ProxyHeader r = parse_text(proxy_header(v, v6("::ffff:10.1.2.3", 4000), v6("::ffff:127.0.0.1", 80)));
        REQUIRE(r.verdict == ProxyHeader::ok);
        CHECK(r.names_client);
        CHECK(differs(r.from, v4("10.1.2.3", 4000)) == "");
        CHECK(differs(r.to, v4("127.0.0.1", 80)) == "");
        // Two families: the header says it cannot describe the connection.
        const std::string mixed = proxy_header(v, v4("10.0.0.1", 1), v6("::1", 2));
        r = parse_text(mixed);
        REQUIRE(r.verdict == ProxyHeader::ok);
        CHECK(r.size == mixed.size());
        CHECK_FALSE(r.names_client);
    }
}

TEST_CASE("parse_proxy_header: 232 bytes always decide, and a decision never changes with more bytes",
          "[unit][proxy]")
{
    // Random bytes behind starts that look like headers, so that every branch is met.
    const SockAddr a4 = v4("192.0.2.7", 40000), b4 = v4("198.51.100.9", 8443);
    const std::string starts[] = {
        "",
        "PROXY ",
        "PROXY TCP4 ",
        "PROXY TCP4 192.0.2.7 198.51.100.9 40000 8443",
        "PROXY UNKNOWN",
        kV2Signature,
        kV2Signature + "\x21",
        kV2Signature + "\x21\x11",
        kV2Signature + "\x21\x11" + std::string("\x00\x0c", 2),
        kV2Signature + "\x21\x21" + std::string("\x00\x24", 2),
        v2_raw(0x21, 0x11, 12, v2_block(a4, b4)),
    };
    std::uint64_t s = 0x9E3779B97F4A7C15ull;
    auto next = [&s] {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return s;
    };
    int undecided = 0, unexplained = 0, changed = 0, counts[3] = {0, 0, 0};
    std::string first;
    for (int round = 0; round < 3000; ++round) {
        std::string b = starts[round % std::size(starts)];
        const std::uint64_t mode = next() % 4;  // 0 random bytes; 1 text with spaces, CR, LF; 2 digits; 3 dots
        while (b.size() < 232) {
            const std::uint64_t r = next();
            char ch = char(r & 0xff);
            if (mode == 1) ch = " \r\nA1:."[(r >> 8) % 7];
            if (mode == 2) ch = "0123456789 \r\n"[(r >> 8) % (r % 64 == 0 ? 13 : 11)];
            if (mode == 3) ch = "1.2 :\r\n"[(r >> 8) % 7];
            b += ch;
        }
        const ProxyHeader full = parse_proxy_header(b.data(), b.size());
        ++counts[full.verdict];
        if (full.verdict == ProxyHeader::incomplete && undecided++ == 0) first = "undecided: " + visible(b);
        if (full.verdict == ProxyHeader::bad && std::string(full.why).empty() && unexplained++ == 0)
            first = "bad without a reason: " + visible(b);
        for (std::size_t k = 0; k < b.size(); ++k) {
            const ProxyHeader r = parse_proxy_header(b.data(), k);
            if (r.verdict == ProxyHeader::incomplete) continue;
            const bool same = r.verdict == full.verdict && (r.verdict != ProxyHeader::ok || r.size == full.size);
            if (!same && changed++ == 0)
                first = std::string(verdict_name(r.verdict)) + " after " + std::to_string(k) + " bytes but "
                        + verdict_name(full.verdict) + " after 232: " + visible(b);
        }
    }
    INFO(first);
    CHECK(undecided == 0);
    CHECK(unexplained == 0);
    CHECK(changed == 0);
    // The mix met both verdicts (each start and mode has its share).
    CHECK(counts[ProxyHeader::ok] > 0);
    CHECK(counts[ProxyHeader::bad] > 0);
}

TEST_CASE("parse_args: --accept-proxy, --trusted and --preread-timeout", "[unit][proxy][parse]")
{
    Config c = parse({"80", "81"});
    CHECK_FALSE(c.accept_proxy);
    CHECK(c.trusted.empty());
    CHECK(c.preread_timeout == 5 * sec);

    c = parse({"--accept-proxy", "--trusted", "127.0.0.1", "--trusted=10.0.0.0/8", "--trusted", "2001:db8::/32",
               "--preread-timeout", "300ms", "80", "81"});
    CHECK(c.accept_proxy);
    CHECK(c.trusted.size() == 3);
    CHECK(c.preread_timeout == 300 * msec);
    CHECK(c.acl.empty());  // --trusted is not an access rule
    CHECK(parse({"--trusted", "::1", "--accept-proxy", "80", "81"}).accept_proxy);
    CHECK(parse({"--accept-proxy", "--trusted", "127.0.0.1", "--deny", "192.0.2.0/24", "80", "81"}).acl.size() == 1);

    struct Case {
        std::vector<const char *> args;
        const char *named;
    };
    const Case cases[] = {
        {{"--accept-proxy", "80", "81"}, "--trusted"},
        {{"80", "81", "--accept-proxy"}, "--trusted"},
        {{"--trusted", "127.0.0.1", "80", "81"}, "--trusted"},
        {{"--accept-proxy", "--trusted", "127.0.0.1", "--preread-timeout", "0", "80", "81"}, "--preread-timeout"},
        {{"--accept-proxy", "--trusted", "127.0.0.1", "--preread-timeout", "soon", "80", "81"}, "soon"},
        {{"--accept-proxy", "--trusted", "127.0.0.1", "--preread-timeout", "-1s", "80", "81"}, "-1s"},
        {{"--accept-proxy", "--trusted", "127.0.0.1", "80", "81", "--preread-timeout"}, "--preread-timeout"},
        {{"--accept-proxy", "--trusted", "10.0.0.1/8", "80", "81"}, "10.0.0.1/8"},
        {{"--accept-proxy", "--trusted", "localhost", "80", "81"}, "localhost"},
        {{"--accept-proxy", "--trusted", "10.0.0.0/33", "80", "81"}, "10.0.0.0/33"},
        {{"--accept-proxy", "80", "81", "--trusted"}, "--trusted"},
        {{"--accept-proxy=1", "--trusted", "127.0.0.1", "80", "81"}, "--accept-proxy"},
    };
    for (const Case &k : cases) {
        std::string m = usage_error(k.args);
        std::string all;
        for (const char *a : k.args) all += std::string(a) + " ";
        INFO("args " << all << ": message '" << m << "'");
        REQUIRE_FALSE(m.empty());
        CHECK(m.find(k.named) != std::string::npos);
        CHECK(m.find('\n') == std::string::npos);
    }
}
