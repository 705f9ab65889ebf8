// Integration tests of the chapter "Operations": weights, health checks, the queue
// limit, the statistics server, the PROXY protocol, restarts with --reuseport and the
// command-line checks of the new options. Each test starts the real binary (IAWLB,
// default ./iawlb) in front of backends run by threads of this process (harness.hpp)
// or plain listening sockets that the test accepts on itself.
//
// Build:  make BUILD=build build/test_ops
// Run from the repository root:  IAWLB=build/iawlb build/test_ops
// IAWLB_SHOW_PROXY=1 also prints the PROXY headers the destination received.
//
// Every loop is bounded in count and time; timeouts are generous so that the
// sanitizer builds pass on a busy machine. Catch2 assertions stay on the main thread.
#define CATCH_CONFIG_EXTERNAL_INTERFACES
#include <catch2/catch.hpp>

#include "balancer.hpp"

#include <cmath>
#include <mutex>
#include <set>

namespace {

// ---------------------------------------------------------------------------
// Small helpers of this suite
// ---------------------------------------------------------------------------

size_t count_of(const std::string& hay, const std::string& needle) {
    size_t n = 0;
    for (size_t at = hay.find(needle); at != std::string::npos; at = hay.find(needle, at + 1)) ++n;
    return n;
}

// Connects and reads up to EOF (a Name backend's answer), keeping the connection open.
struct Held {
    Fd fd;
    std::string answer;
};
Held open_and_read_name(uint16_t port) {
    Held h;
    int e = 0;
    h.fd = connect_to(kLo, port, kIo, &e);
    if (!h.fd) {
        h.answer = std::string("<connect: ") + std::strerror(e) + ">";
        return h;
    }
    Io st = recv_until_eof(h.fd.get(), h.answer, kIo);
    if (st != Io::Eof) h.answer = "<" + std::string(io_name(st)) + " after '" + h.answer + "'>";
    return h;
}

// Opens n connections and keeps them in `held`; returns the answers tallied.
std::map<std::string, int> hold(uint16_t port, int n, std::vector<Held>& held) {
    std::map<std::string, int> counts;
    for (int i = 0; i < n; ++i) {
        held.push_back(open_and_read_name(port));
        counts[held.back().answer]++;
    }
    return counts;
}

// Accepts one connection on a non-blocking listening socket.
Fd accept_one(int lfd, double timeout) {
    Deadline d(timeout);
    for (;;) {
        int fd = ::accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) return Fd(fd);
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return Fd();
        if (!wait_ready(lfd, POLLIN, d)) return Fd();
    }
}

std::string hex(const std::string& s) {
    std::string out;
    char b[4];
    for (unsigned char ch : s) {
        std::snprintf(b, sizeof b, "%02x ", ch);
        out += b;
    }
    if (!out.empty()) out.pop_back();
    return out;
}

// ---------------------------------------------------------------------------
// The Prometheus text format (version 0.0.4), checked strictly
// ---------------------------------------------------------------------------

struct Exposition {
    std::map<std::string, double> values;  // "name" or "name{labels}" -> value
    std::map<std::string, std::string> type, help;
    std::vector<std::string> families;  // in order of appearance
    std::vector<std::string> errors;
    size_t samples = 0;
};

bool metric_name_ok(const std::string& n) {
    if (n.empty()) return false;
    for (size_t i = 0; i < n.size(); ++i) {
        char ch = n[i];
        bool ok = std::isalpha(static_cast<unsigned char>(ch)) || ch == '_' || ch == ':' ||
                  (i > 0 && std::isdigit(static_cast<unsigned char>(ch)));
        if (!ok) return false;
    }
    return true;
}

bool label_name_ok(const std::string& n) {
    if (n.empty()) return false;
    for (size_t i = 0; i < n.size(); ++i) {
        char ch = n[i];
        bool ok = std::isalpha(static_cast<unsigned char>(ch)) || ch == '_' || (i > 0 && std::isdigit(static_cast<unsigned char>(ch)));
        if (!ok) return false;
    }
    return true;
}

// Parses "{a="x",b="y"}" starting at s[i] == '{'; returns the index after '}' or npos.
size_t parse_labels(const std::string& s, size_t i, std::string& why) {
    ++i;
    bool first = true;
    std::set<std::string> seen;
    for (;;) {
        if (i >= s.size()) {
            why = "unterminated labels";
            return std::string::npos;
        }
        if (s[i] == '}') return i + 1;
        if (!first) {
            if (s[i] != ',') {
                why = "expected ',' between labels";
                return std::string::npos;
            }
            ++i;
            if (i < s.size() && s[i] == '}') return i + 1;  // a trailing comma is allowed
        }
        first = false;
        size_t eq = s.find('=', i);
        if (eq == std::string::npos) {
            why = "label without '='";
            return std::string::npos;
        }
        std::string name = s.substr(i, eq - i);
        if (!label_name_ok(name) || !seen.insert(name).second) {
            why = "bad or repeated label name '" + name + "'";
            return std::string::npos;
        }
        i = eq + 1;
        if (i >= s.size() || s[i] != '"') {
            why = "label value not quoted";
            return std::string::npos;
        }
        ++i;
        for (;;) {
            if (i >= s.size()) {
                why = "unterminated label value";
                return std::string::npos;
            }
            if (s[i] == '\\') {
                if (i + 1 >= s.size() || (s[i + 1] != '\\' && s[i + 1] != '"' && s[i + 1] != 'n')) {
                    why = "bad escape in a label value";
                    return std::string::npos;
                }
                i += 2;
                continue;
            }
            if (s[i] == '\n') {
                why = "newline in a label value";
                return std::string::npos;
            }
            if (s[i] == '"') break;
            ++i;
        }
        ++i;
    }
}

bool parse_value(const std::string& v, double& out) {
    if (v == "+Inf" || v == "-Inf" || v == "NaN") {
        out = v == "NaN" ? NAN : (v[0] == '-' ? -INFINITY : INFINITY);
        return true;
    }
    if (v.empty()) return false;
    char* end = nullptr;
    errno = 0;
    out = std::strtod(v.c_str(), &end);
    return errno == 0 && end == v.c_str() + v.size() && std::isfinite(out);
}

Exposition parse_exposition(const std::string& text) {
    Exposition ex;
    auto err = [&](size_t line_no, const std::string& line, const std::string& why) {
        ex.errors.push_back("line " + std::to_string(line_no) + " '" + printable(line) + "': " + why);
    };
    if (text.empty() || text.back() != '\n') ex.errors.push_back("the text does not end with a newline");
    std::set<std::string> closed;  // families whose samples are over
    std::string current;           // family of the previous sample
    size_t line_no = 0;
    std::stringstream ss(text);
    std::string line;
    while (std::getline(ss, line)) {
        ++line_no;
        if (line.empty()) continue;
        if (line[0] == '#') {
            std::istringstream ls(line);
            std::string hash, kw, name;
            ls >> hash >> kw >> name;
            if (hash != "#" || (kw != "HELP" && kw != "TYPE")) continue;  // a plain comment
            if (!metric_name_ok(name)) {
                err(line_no, line, "bad metric name in " + kw);
                continue;
            }
            std::string rest;
            std::getline(ls, rest);
            if (!rest.empty() && rest[0] == ' ') rest.erase(0, 1);
            auto& table = kw == "HELP" ? ex.help : ex.type;
            if (table.count(name)) err(line_no, line, "second " + kw + " for " + name);
            if (ex.values.count(name) || closed.count(name) || current == name)
                err(line_no, line, kw + " after the samples of " + name);
            if (kw == "TYPE") {
                static const std::set<std::string> types = {"counter", "gauge", "histogram", "summary", "untyped"};
                if (!types.count(rest)) err(line_no, line, "unknown type '" + rest + "'");
            } else if (rest.empty()) {
                err(line_no, line, "empty HELP text");
            }
            table[name] = rest;
            if (std::find(ex.families.begin(), ex.families.end(), name) == ex.families.end()) ex.families.push_back(name);
            continue;
        }
        // A sample: name, optional labels, one space, the value (an optional timestamp).
        size_t i = 0;
        while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
        std::string name = line.substr(0, i);
        if (!metric_name_ok(name)) {
            err(line_no, line, "bad metric name");
            continue;
        }
        size_t after = i;
        if (i < line.size() && line[i] == '{') {
            std::string why;
            after = parse_labels(line, i, why);
            if (after == std::string::npos) {
                err(line_no, line, why);
                continue;
            }
        }
        std::string series = line.substr(0, after);
        if (after >= line.size() || line[after] != ' ') {
            err(line_no, line, "no space before the value");
            continue;
        }
        std::string rest = line.substr(after + 1);
        std::string value = rest.substr(0, rest.find(' '));
        if (rest.find(' ') != std::string::npos) {
            std::string ts = rest.substr(rest.find(' ') + 1);
            if (ts.empty() || ts.find_first_not_of("-0123456789") != std::string::npos)
                err(line_no, line, "bad timestamp");
        }
        double v = 0;
        if (!parse_value(value, v)) {
            err(line_no, line, "bad value '" + value + "'");
            continue;
        }
        // This suite's families have no _bucket/_sum/_count children: the family is the name.
        if (!ex.help.count(name)) err(line_no, line, "no # HELP before the samples of " + name);
        if (!ex.type.count(name)) err(line_no, line, "no # TYPE before the samples of " + name);
        if (ex.type.count(name) && ex.type[name] == "counter" &&
            (name.size() < 6 || name.compare(name.size() - 6, 6, "_total") != 0))
            err(line_no, line, "a counter whose name does not end in _total");
        if (closed.count(name)) err(line_no, line, "the samples of " + name + " are not together");
        if (current != name) {
            if (!current.empty()) closed.insert(current);
            current = name;
        }
        if (ex.values.count(series)) err(line_no, line, "a second sample of " + series);
        ex.values[series] = v;
        ++ex.samples;
    }
    for (const std::string& f : ex.families)
        if (!ex.help.count(f) || !ex.type.count(f)) ex.errors.push_back("family " + f + " lacks HELP or TYPE");
    return ex;
}

std::string dest_series(const std::string& name, const std::string& dest) {
    return name + "{destination=\"" + dest + "\"}";
}

double value_of(const std::map<std::string, double>& m, const std::string& series) {
    auto it = m.find(series);
    return it == m.end() ? NAN : it->second;
}

// One scrape of /metrics; empty values on any failure.
std::map<std::string, double> scrape(uint16_t stats_port) {
    HttpReply r = http_get(stats_port, "/metrics", 10.0);
    if (!r.error.empty() || r.status != 200) return {};
    Exposition ex = parse_exposition(r.body);
    if (!ex.errors.empty()) return {};
    return ex.values;
}

bool wait_metric(uint16_t stats_port, const std::string& series, double want, double timeout) {
    return wait_until([&] { return value_of(scrape(stats_port), series) == want; }, timeout, 0.05);
}

std::string show_metrics(const std::map<std::string, double>& m, const std::string& filter = "") {
    std::ostringstream os;
    for (auto& [k, v] : m)
        if (filter.empty() || k.find(filter) != std::string::npos) os << k << " " << v << "\n";
    return os.str();
}

// ---------------------------------------------------------------------------
// PROXY protocol headers, built here from the specification (HAProxy's
// proxy-protocol.txt), independently of the balancer's code
// ---------------------------------------------------------------------------

std::string expected_v1(bool v6, const std::string& src, const std::string& dst, uint16_t sport, uint16_t dport) {
    return std::string("PROXY ") + (v6 ? "TCP6" : "TCP4") + " " + src + " " + dst + " " + std::to_string(sport) +
           " " + std::to_string(dport) + "\r\n";
}

std::string expected_v2(bool v6, const std::string& src, const std::string& dst, uint16_t sport, uint16_t dport) {
    static const unsigned char sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
    std::string h(reinterpret_cast<const char*>(sig), sizeof sig);
    h += static_cast<char>(0x21);             // version 2, command PROXY
    h += static_cast<char>(v6 ? 0x21 : 0x11);  // AF_INET6 / AF_INET, STREAM
    const size_t alen = v6 ? 16 : 4;
    const size_t len = 2 * alen + 4;  // 12 or 36
    h += static_cast<char>((len >> 8) & 0xff);
    h += static_cast<char>(len & 0xff);
    unsigned char a[16];
    for (const std::string* ip : {&src, &dst}) {
        std::memset(a, 0, sizeof a);
        if (::inet_pton(v6 ? AF_INET6 : AF_INET, ip->c_str(), a) != 1) return "<bad address " + *ip + ">";
        h.append(reinterpret_cast<const char*>(a), alen);
    }
    for (uint16_t p : {sport, dport}) {
        h += static_cast<char>(p >> 8);
        h += static_cast<char>(p & 0xff);
    }
    return h;
}

// What one client through a balancer to a plain listening socket found: what the
// destination received (up to the client's EOF), and the way back.
struct ProxyRun {
    std::string error;
    std::string received;  // all bytes the destination got
    uint16_t client_port = 0;
    std::string reply;  // what the client got back
};

// Sends `bytes` in pieces of `piece` bytes, `pause` seconds apart (the client
// socket has TCP_NODELAY: see connect_once, so each piece is its own segment).
Io send_in_pieces(int fd, const std::string& bytes, size_t piece, double pause) {
    for (size_t at = 0; at < bytes.size(); at += piece) {
        if (at > 0) sleep_s(pause);
        Io st = send_all(fd, bytes.substr(at, piece), kIo);
        if (st != Io::Ok) return st;
    }
    return Io::Ok;
}

// One client (from `host`) through a balancer to the plain listener `dl`: it
// sends `first` (its PROXY header, and maybe the start of its payload) in pieces,
// then, once the destination has its connection, `rest` in chunks while the
// destination reads, then half-closes. The destination reads up to EOF and
// answers "pong\n"; the client reads that up to EOF.
ProxyRun run_with_header(int dl, uint16_t lp, const std::string& first, size_t piece, double pause,
                         const std::string& rest = "", const std::string& host = kLo) {
    ProxyRun r;
    int e = 0;
    Fd c = connect_to(host, lp, kIo, &e);
    if (!c) {
        r.error = std::string("connect: ") + std::strerror(e);
        return r;
    }
    r.client_port = local_port(c.get());
    Io st = send_in_pieces(c.get(), first, piece, pause);
    if (st != Io::Ok) {
        r.error = std::string("client send of its header: ") + io_name(st);
        return r;
    }
    Fd s = accept_one(dl, kIo);
    if (!s) {
        r.error = "the destination got no connection";
        return r;
    }
    for (size_t at = 0; at < rest.size(); at += 16384) {
        if (send_all(c.get(), rest.substr(at, 16384), kIo) != Io::Ok) {
            r.error = "client send of its payload failed at byte " + std::to_string(at);
            return r;
        }
        st = recv_available(s.get(), r.received);
        if (st != Io::Ok) {
            r.error = std::string("destination recv: ") + io_name(st) + " after " + std::to_string(r.received.size());
            return r;
        }
    }
    ::shutdown(c.get(), SHUT_WR);
    st = recv_until_eof(s.get(), r.received, kIo);
    if (st != Io::Eof) {
        r.error = std::string("destination recv: ") + io_name(st) + " after " + std::to_string(r.received.size()) +
                  " bytes: '" + printable(r.received.substr(0, 120)) + "'";
        return r;
    }
    if (send_all(s.get(), "pong\n", kIo) != Io::Ok) r.error = "destination send failed";
    s.reset();
    st = recv_until_eof(c.get(), r.reply, kIo);
    if (st != Io::Eof && r.error.empty()) r.error = std::string("client recv: ") + io_name(st);
    return r;
}

// One client through a --send-proxy(-v2) balancer, its payload in one piece.
ProxyRun run_through_proxy(int dest_listener, const std::string& client_host, uint16_t lp, const std::string& payload) {
    return run_with_header(dest_listener, lp, payload, payload.size() + 1, 0, "", client_host);
}

void maybe_show(const std::string& what, const std::string& bytes) {
    const char* e = std::getenv("IAWLB_SHOW_PROXY");
    if (!e || !*e) return;
    std::cout << what << " (" << bytes.size() << " bytes)\n  text: " << printable(bytes) << "\n  hex:  " << hex(bytes)
              << "\n";
}

}  // namespace

// ===========================================================================
// 1. Weights
// ===========================================================================

TEST_CASE("weights: DEST@3 DEST DEST share the clients 3:1:1", "[integration][ops]") {
    auto a = Backend::make(Kind::Name, "A");
    auto b = Backend::make(Kind::Name, "B");
    auto c = Backend::make(Kind::Name, "C");
    auto all_closed = [&] { return a->active() + b->active() + c->active() == 0; };
    uint16_t lp = free_port();
    auto args = [&](const std::string& algorithm) {
        return std::vector<std::string>{"-a", algorithm, listen_arg(lp), a->address() + "@3", b->address(), c->address()};
    };
    // The smooth weighted rotation of 3, 1, 1: a, b, a, c, a, and the same again.
    const std::vector<std::string> period = {"A\n", "B\n", "A\n", "C\n", "A\n"};

    // Sequential short connections, each fully closed before the next one starts (the
    // balancer releases a destination before it closes its socket, so a backend with
    // no connection left means the balancer has released it too): both algorithms
    // then follow the rotation exactly.
    for (const std::string algorithm : {"roundrobin", "leastconn"}) {
        DYNAMIC_SECTION("sequential short connections, " << algorithm << ": exactly 30/10/10, in rotation order") {
            auto lb = start_balancer(args(algorithm));
            std::vector<std::string> order;
            std::map<std::string, int> counts;
            bool settled = true;
            for (int i = 0; i < 50; ++i) {
                std::string s = fetch(kLo, lp);
                order.push_back(s);
                counts[s]++;
                if (s.empty() || s[0] == '<') break;
                settled = settled && wait_until(all_closed, kIo, 0.001);
            }
            INFO("answers: " << show(counts));
            CHECK(settled);
            CHECK(counts["A\n"] == 30);
            CHECK(counts["B\n"] == 10);
            CHECK(counts["C\n"] == 10);
            REQUIRE(order.size() == 50);
            int out_of_order = 0;
            for (size_t i = 0; i < order.size(); ++i) out_of_order += order[i] == period[i % 5] ? 0 : 1;
            CHECK(out_of_order == 0);
        }
    }

    SECTION("leastconn, back-to-back short connections: close to 30/10/10") {
        // A connection may still be open in the balancer for a moment after its client
        // got EOF and closed; least connections then leaves that destination out of the
        // next pick. Usually that never happens and the shares are exact; if every pick
        // found the previous connection still open they would be 22/14/14, and any mix
        // of the two stays within A 20..31, B and C 9..19 (a simulation of the rotation).
        // Without weights A would get about 17. One worker, so that at most the one
        // previous connection can still be open (with two, under a sanitizer, two
        // were, and A got 19).
        std::vector<std::string> one_worker = args("leastconn");
        one_worker.insert(one_worker.begin(), {"-w", "1"});
        auto lb = start_balancer(one_worker);
        std::map<std::string, int> counts = fetch_many(lp, 50);
        INFO("answers: " << show(counts));
        CHECK(counts["A\n"] + counts["B\n"] + counts["C\n"] == 50);
        CHECK(counts["A\n"] >= 20);
        CHECK(counts["A\n"] <= 32);
        CHECK(counts["B\n"] >= 8);
        CHECK(counts["B\n"] <= 20);
        CHECK(counts["C\n"] >= 8);
        CHECK(counts["C\n"] <= 20);
    }

    SECTION("leastconn, connections held open: held in proportion; a freed destination gets the next ones") {
        auto lb = start_balancer(args("leastconn"));
        std::vector<Held> held;
        std::map<std::string, int> counts = hold(lp, 50, held);
        INFO("answers while held: " << show(counts));
        CHECK(counts["A\n"] == 30);
        CHECK(counts["B\n"] == 10);
        CHECK(counts["C\n"] == 10);
        CHECK(a->active() == 30);
        CHECK(b->active() == 10);
        CHECK(c->active() == 10);
        // Close B's ten: loads are now A 30/3, B 0, C 10; B alone is the least loaded
        // until it holds ten again.
        for (auto& h : held)
            if (h.answer == "B\n") h.fd.reset();
        CHECK(wait_until([&] { return b->active() == 0; }, kIo));
        std::map<std::string, int> next = hold(lp, 10, held);
        INFO("the 10 after B's were closed: " << show(next));
        CHECK(next["B\n"] == 10);
    }

    SECTION("roundrobin, connections held open: the rotation ignores the load") {
        auto lb = start_balancer(args("roundrobin"));
        std::vector<Held> held;
        std::map<std::string, int> counts = hold(lp, 50, held);
        INFO("answers while held: " << show(counts));
        CHECK(counts["A\n"] == 30);
        CHECK(counts["B\n"] == 10);
        CHECK(counts["C\n"] == 10);
        for (auto& h : held)
            if (h.answer == "B\n") h.fd.reset();
        CHECK(wait_until([&] { return b->active() == 0; }, kIo));
        std::map<std::string, int> next = hold(lp, 10, held);
        INFO("the 10 after B's were closed: " << show(next));
        CHECK(next["A\n"] == 6);
        CHECK(next["B\n"] == 2);
        CHECK(next["C\n"] == 2);
    }
}

// ===========================================================================
// 2. Health checks, and passive marking
// ===========================================================================

TEST_CASE("health checks (--check-interval): a dead destination is taken out before any client meets it",
          "[integration][ops]") {
    auto a = Backend::make(Kind::Name, "HA");
    auto b = Backend::make(Kind::Name, "HB");
    const auto ports = free_ports(2);
    REQUIRE(ports.size() == 2);
    const uint16_t lp = ports[0], sp = ports[1];
    const std::string an = a->address(), bn = b->address();
    auto lb = start_balancer({"-v", "-a", "roundrobin", "--check-interval", "250ms", "--rise", "2", "--fall", "2",
                              "--stats", listen_arg(sp), listen_arg(lp), an, bn});

    std::map<std::string, int> before = fetch_many(lp, 10);
    INFO("before the kill: " << show(before));
    CHECK(before["HA\n"] == 5);
    CHECK(before["HB\n"] == 5);

    b->kill();
    const std::string down_line = "destination " + bn + " is down: health check: Connection refused";
    bool down = lb->wait_for_log(down_line, kIo);
    REQUIRE(down);
    // --fall 2: one refused check changes nothing (logged with -v), the second takes it out.
    std::string log = lb->log();
    CHECK(count_of(log.substr(0, log.find(down_line)), "destination " + bn + ": health check failed: Connection refused") == 1);

    // From now on no client is sent to it: not one connect fails.
    std::map<std::string, int> during;
    for (int i = 0; i < 30; ++i) {
        during[fetch(kLo, lp)]++;
        if (i == 14) sleep_s(0.6);  // a few more check rounds in between
    }
    INFO("while B is down: " << show(during));
    CHECK(during["HA\n"] == 30);
    auto m = scrape(sp);
    INFO(show_metrics(m, "destination"));
    CHECK(value_of(m, dest_series("iawlb_destination_up", bn)) == 0);
    CHECK(value_of(m, dest_series("iawlb_destination_up", an)) == 1);
    CHECK(value_of(m, dest_series("iawlb_destination_failed_connects_total", bn)) == 0);
    CHECK(value_of(m, dest_series("iawlb_destination_connections_total", bn)) == 5);
    CHECK(value_of(m, dest_series("iawlb_destination_connections_total", an)) == 35);

    // Back on the same port: after --rise 2 passed checks it gets clients again.
    REQUIRE(b->start());
    bool up = lb->wait_for_log("destination " + bn + " is up again: health check passed", kIo);
    CHECK(up);
    std::map<std::string, int> after = fetch_many(lp, 20);
    INFO("after B came back: " << show(after));
    CHECK(after["HA\n"] == 10);
    CHECK(after["HB\n"] == 10);

    log = lb->log();
    INFO("log:\n" << log);
    CHECK(log.find(bn + " is down: connect") == std::string::npos);  // no client ever met the failure
    CHECK(log.find(an + " is down") == std::string::npos);
    m = scrape(sp);
    CHECK(value_of(m, dest_series("iawlb_destination_failed_connects_total", bn)) == 0);
    CHECK(value_of(m, dest_series("iawlb_destination_up", bn)) == 1);
    CHECK(value_of(m, "iawlb_refused_connections_total") == 0);
}

TEST_CASE("passive marking: a refused client connect marks a destination down, with or without checks",
          "[integration][ops]") {
    auto a = Backend::make(Kind::Name, "PA");
    auto b = Backend::make(Kind::Name, "PB");
    const auto ports = free_ports(2);
    REQUIRE(ports.size() == 2);
    const uint16_t lp = ports[0], sp = ports[1];
    const std::string an = a->address(), bn = b->address();
    std::vector<std::string> extra;
    SECTION("without --check-interval") {}
    SECTION("with --check-interval 1h: the destination dies between two checks") { extra = {"--check-interval", "1h"}; }

    std::vector<std::string> args = {"-v", "-a", "roundrobin", "--backoff-max", "500ms", "--stats", listen_arg(sp)};
    args.insert(args.end(), extra.begin(), extra.end());
    for (const std::string& s : {listen_arg(lp), an, bn}) args.push_back(s);
    auto lb = start_balancer(args);
    std::map<std::string, int> before = fetch_many(lp, 4);
    CHECK(before["PB\n"] == 2);

    b->kill();
    std::map<std::string, int> during = fetch_many(lp, 10);
    INFO("while B is down: " << show(during));
    CHECK(during["PA\n"] == 10);  // the client sent to B was sent on to A without noticing
    CHECK(lb->wait_for_log("destination " + bn + " is down: connect: Connection refused", kIo));
    auto m = scrape(sp);
    INFO(show_metrics(m, "destination"));
    CHECK(value_of(m, dest_series("iawlb_destination_failed_connects_total", bn)) >= 1);
    CHECK(value_of(m, dest_series("iawlb_destination_up", bn)) == 0);
    CHECK(lb->log().find("health check") == std::string::npos);

    // Back: a trial client finds it within the backoff (at most 500 ms here).
    REQUIRE(b->start());
    bool served = wait_until([&] { return fetch(kLo, lp) == "PB\n"; }, kIo, 0.1);
    CHECK(served);
    CHECK(lb->wait_for_log("destination " + bn + " is up again", kIo));
}

// ===========================================================================
// 3. The queue limit
// ===========================================================================

TEST_CASE("queue limit (--queue-max): beyond N waiting clients, more are closed at once", "[integration][ops]") {
    const auto ports = free_ports(3);
    REQUIRE(ports.size() == 3);
    const uint16_t lp = ports[0], sp = ports[1], dead = ports[2];
    auto lb = start_balancer({"-v", "--queue-max", "3", "--queue-timeout", "5s", "--backoff-max", "250ms", "--stats",
                              listen_arg(sp), listen_arg(lp), listen_arg(dead)});

    // Three clients wait (each has sent its request, which the kernel holds).
    std::vector<Fd> waiting;
    auto msg = [](size_t i) { return "waiting client " + std::to_string(i) + "\n"; };
    for (size_t i = 0; i < 3; ++i) {
        waiting.push_back(connect_to(kLo, lp));
        REQUIRE(waiting.back());
        REQUIRE(send_all(waiting.back().get(), msg(i), kIo) == Io::Ok);
        bool queued = wait_metric(sp, "iawlb_queued_connections", double(i + 1), kIo);
        INFO("client " << i << ":\n" << show_metrics(scrape(sp)));
        REQUIRE(queued);
    }

    // The fourth and fifth are closed at once, long before the 5 s queue timeout.
    for (int i = 0; i < 2; ++i) {
        Fd extra = connect_to(kLo, lp);
        REQUIRE(extra);
        double t0 = now();
        Io st = wait_closed(extra.get(), 4.0);
        INFO("extra client " << i << ": " << io_name(st) << " after " << now() - t0 << " s");
        CHECK((st == Io::Eof || st == Io::Reset));
    }
    CHECK(wait_until([&] { return count_of(lb->log(), " queue-full ") == 2; }, kIo));
    sleep_s(1.0);
    for (size_t i = 0; i < waiting.size(); ++i) {  // still waiting, more than 1 s later
        std::string early;
        Io st = recv_available(waiting[i].get(), early);
        INFO("waiting client " << i);
        CHECK(st == Io::Ok);
        CHECK(early.empty());
    }
    auto m = scrape(sp);
    CHECK(value_of(m, "iawlb_queued_connections") == 3);
    CHECK(value_of(m, "iawlb_refused_connections_total") == 2);
    CHECK(value_of(m, "iawlb_accepted_connections_total") == 5);

    // A server appears on the dead port: the three waiting clients are served.
    auto echo = Backend::make(Kind::Echo, "late", kLo, dead);
    for (size_t i = 0; i < waiting.size(); ++i) {
        std::string got;
        Io st = recv_exact(waiting[i].get(), got, msg(i).size(), kIo);
        INFO("waiting client " << i << ": " << io_name(st) << " '" << got << "'");
        CHECK(st == Io::Ok);
        CHECK(got == msg(i));
        ::shutdown(waiting[i].get(), SHUT_WR);
        CHECK(wait_closed(waiting[i].get(), kIo) == Io::Eof);
    }
    CHECK(wait_metric(sp, "iawlb_active_connections", 0, kIo));
    m = scrape(sp);
    INFO(show_metrics(m));
    CHECK(value_of(m, "iawlb_refused_connections_total") == 2);
    CHECK(value_of(m, "iawlb_queued_connections") == 0);
    CHECK(value_of(m, dest_series("iawlb_destination_connections_total", listen_arg(dead))) == 3);
    CHECK(echo->connections() == 3);
}

// A client back in the queue after a failed trial connect was admitted already:
// it must not be closed because a newcomer took its place while it was trying
// (an earlier version closed the client that had waited longest).
TEST_CASE("queue limit (--queue-max): a waiting client's failed trial does not cost it its place",
          "[integration][ops]") {
    const Blackhole hole = blackhole_destination();
    if (!hole) {
        WARN("cannot make a destination that never answers here: test skipped");
        return;
    }
    const uint16_t bp = hole.port;
    uint16_t lp = free_port();
    // c1's first connect times out after 2 s and it is queued (admitted); its
    // trials then take 2 s of every 2.25 s. c2 arrives in the middle of the first.
    auto lb = start_balancer({"-v", "-w", "1", "--queue-max", "1", "--queue-timeout", "30s", "--connect-timeout",
                              "2s", "--backoff-max", "250ms", listen_arg(lp), listen_arg(bp)});
    const double t0 = now();
    Fd c1 = connect_to(kLo, lp);
    REQUIRE(c1);
    CHECK(wait_until([&] { return lb->log().find("is down") != std::string::npos; }, kIo));
    sleep_s(std::max(0.0, t0 + 3.2 - now()));  // c1 is on its trial connect now
    Fd c2 = connect_to(kLo, lp);
    REQUIRE(c2);
    sleep_s(std::max(0.0, t0 + 5.5 - now()));  // c1's trial has failed by now
    std::string got;
    Io s1 = recv_available(c1.get(), got);
    Io s2 = recv_available(c2.get(), got);
    INFO("at " << now() - t0 << " s: c1 " << io_name(s1) << ", c2 " << io_name(s2));
    CHECK(s1 == Io::Ok);  // still waiting: not closed as queue-full
    CHECK(lb->log().find(" queue-full ") == std::string::npos);
}

// ===========================================================================
// 4. Statistics
// ===========================================================================

TEST_CASE("statistics (--stats): exact counters, Prometheus text format, HTTP errors, stuck clients",
          "[integration][ops]") {
    auto u1 = Backend::make(Kind::UploadAnswer, "U1");
    auto u2 = Backend::make(Kind::UploadAnswer, "U2");
    const auto ports = free_ports(2);
    REQUIRE(ports.size() == 2);
    const uint16_t lp = ports[0], sp = ports[1];
    const std::string d1 = u1->address(), d2 = u2->address();
    auto lb = start_balancer({"-a", "roundrobin", "--stats", std::to_string(sp), listen_arg(lp), d1, d2});
    CHECK(lb->log().find("statistics on http://127.0.0.1:" + std::to_string(sp) + "/metrics") != std::string::npos);

    // Exactly 100 relayed connections, of different sizes, each an upload answered by
    // its size and checksum; round robin sends the even ones to the first destination
    // and the odd ones to the second.
    uint64_t up[2] = {0, 0}, down[2] = {0, 0};
    int bad = 0;
    std::string first_bad;
    for (int i = 0; i < 100; ++i) {
        // The first is big enough for the relay's bulk path (splice), the rest small.
        const size_t n = i == 0 ? 3 * MiB + 7 : static_cast<size_t>(1 + (i * 997) % 3000);
        std::string data = Pattern(5000 + i).bytes(n);
        Fnv1a f;
        f.update(data.data(), data.size());
        const std::string want = std::to_string(n) + " " + f.hex() + "\n";
        Fd c = connect_to(kLo, lp);
        std::string got;
        bool ok = c && send_all(c.get(), data, kIo) == Io::Ok && ::shutdown(c.get(), SHUT_WR) == 0 &&
                  recv_until_eof(c.get(), got, kIo) == Io::Eof && got == want;
        if (!ok && bad++ == 0) first_bad = "connection " + std::to_string(i) + ": got '" + got + "'";
        up[i % 2] += n;
        down[i % 2] += want.size();
    }
    INFO(first_bad);
    REQUIRE(bad == 0);
    REQUIRE(wait_metric(sp, "iawlb_active_connections", 0, kIo));

    HttpReply r = http_get(sp, "/metrics");
    INFO(r.error << "\n" << r.raw);
    REQUIRE(r.error == "");
    CHECK(r.status == 200);
    CHECK(r.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8");
    Exposition ex = parse_exposition(r.body);
    std::string errors;
    for (auto& e : ex.errors) errors += e + "\n";
    INFO("format errors:\n" << errors);
    CHECK(ex.errors.empty());
    const std::vector<std::string> families = {
        "iawlb_destination_up", "iawlb_destination_weight", "iawlb_destination_active_connections",
        "iawlb_destination_connections_total", "iawlb_destination_failed_connects_total",
        "iawlb_destination_sent_bytes_total", "iawlb_destination_received_bytes_total",
        "iawlb_destination_last_change_seconds", "iawlb_accepted_connections_total", "iawlb_queued_connections",
        "iawlb_active_connections", "iawlb_refused_connections_total", "iawlb_denied_connections_total",
        "iawlb_bad_proxy_headers_total", "iawlb_uptime_seconds"};
    CHECK(ex.families == families);
    CHECK(ex.samples == 8 * 2 + 7);
    for (const std::string& f : families) {
        const bool counter = f.size() > 6 && f.compare(f.size() - 6, 6, "_total") == 0;
        INFO(f);
        CHECK(ex.type[f] == (counter ? "counter" : "gauge"));
    }
    const auto& v = ex.values;
    CHECK(value_of(v, "iawlb_accepted_connections_total") == 100);
    CHECK(value_of(v, "iawlb_active_connections") == 0);
    CHECK(value_of(v, "iawlb_queued_connections") == 0);
    CHECK(value_of(v, "iawlb_refused_connections_total") == 0);
    CHECK(value_of(v, "iawlb_uptime_seconds") > 0);
    const std::string dn[2] = {d1, d2};
    const Backend* be[2] = {u1.get(), u2.get()};
    double sum = 0;
    for (int k = 0; k < 2; ++k) {
        INFO("destination " << dn[k]);
        sum += value_of(v, dest_series("iawlb_destination_connections_total", dn[k]));
        CHECK(value_of(v, dest_series("iawlb_destination_connections_total", dn[k])) == 50);
        CHECK(value_of(v, dest_series("iawlb_destination_connections_total", dn[k])) == be[k]->connections());
        CHECK(value_of(v, dest_series("iawlb_destination_up", dn[k])) == 1);
        CHECK(value_of(v, dest_series("iawlb_destination_weight", dn[k])) == 1);
        CHECK(value_of(v, dest_series("iawlb_destination_active_connections", dn[k])) == 0);
        CHECK(value_of(v, dest_series("iawlb_destination_failed_connects_total", dn[k])) == 0);
        CHECK(value_of(v, dest_series("iawlb_destination_sent_bytes_total", dn[k])) == double(up[k]));
        CHECK(value_of(v, dest_series("iawlb_destination_received_bytes_total", dn[k])) == double(down[k]));
        CHECK(value_of(v, dest_series("iawlb_destination_last_change_seconds", dn[k])) >= 0);
    }
    CHECK(sum == 100);

    SECTION("other requests: the index, 404, 405, 400, 431") {
        HttpReply idx = http_get(sp, "/");
        INFO(idx.error << "\n" << idx.raw);
        CHECK(idx.error == "");
        CHECK(idx.status == 200);
        CHECK(idx.body.find("/metrics") != std::string::npos);
        CHECK(idx.body.size() < 1024);
        CHECK(http_get(sp, "/metrics?name=x").status == 200);  // the query is ignored
        CHECK(http_raw(sp, "GET / HTTP/1.0\n\n").status == 200);  // bare LF line ends

        struct Case {
            std::string request;
            int status;
        };
        const std::vector<Case> cases = {
            {"GET /nope HTTP/1.0\r\n\r\n", 404},
            {"GET /metrics/ HTTP/1.0\r\n\r\n", 404},
            {"POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n", 405},
            {"HEAD /metrics HTTP/1.0\r\n\r\n", 405},
            {"hello there\r\n\r\n", 400},
            {"GET /metrics\r\n\r\n", 400},
            {"GET  HTTP/1.0\r\n\r\n", 400},
            {"GET /metrics SPDY/3\r\n\r\n", 400},
            {std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 15), 400},
        };
        for (const Case& k : cases) {
            HttpReply e = http_raw(sp, k.request);
            INFO("request '" << printable(k.request) << "': " << e.error << "\n" << e.raw);
            CHECK(e.error == "");
            CHECK(e.status == k.status);
            if (k.status == 405) CHECK(e.header("Allow") == "GET");
        }
        // A header that does not end within 4 KiB: 431, and the connection closed.
        const std::string big = "GET /metrics HTTP/1.0\r\nX-Filler: " + std::string(16 * 1024, 'x');
        HttpReply e = http_raw(sp, big);
        INFO(e.error << "\n" << e.raw.substr(0, 300));
        CHECK(e.error == "");
        CHECK(e.status == 431);
        const std::string big_done = "GET /metrics HTTP/1.0\r\nX-Filler: " + std::string(6 * 1024, 'x') + "\r\n\r\n";
        CHECK(http_raw(sp, big_done).status == 431);
        // Still serving after all that.
        CHECK(value_of(scrape(sp), "iawlb_accepted_connections_total") == 100);
    }

    SECTION("stuck statistics clients slow neither the relay nor the other statistics clients") {
        auto stuck = [&](int i) -> Fd {
            // i % 4: 0 and 3 send nothing, 1 half a request line, 2 a whole request but
            // never reads (with a receive buffer as small as the kernel allows).
            if (i % 4 != 2) {
                Fd c = connect_once(kLo, sp, kIo);
                if (c && i % 4 == 1 && send_all(c.get(), "GET /metr", kIo) != Io::Ok) return Fd();
                return c;
            }
            SockAddr a;
            if (!make_addr(kLo, sp, a)) return Fd();
            Fd c = tcp_socket(AF_INET);
            int small = 1;
            ::setsockopt(c.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
            if (::connect(c.get(), a.ptr(), a.len) != 0 && errno != EINPROGRESS) return Fd();
            Deadline d(kIo);
            if (!wait_ready(c.get(), POLLOUT, d)) return Fd();
            if (send_all(c.get(), "GET /metrics HTTP/1.0\r\n\r\n", kIo) != Io::Ok) return Fd();
            return c;
        };
        auto still_open = [](int fd) {
            std::string s;
            return recv_available(fd, s) == Io::Ok && s.empty();
        };

        // 15 stuck clients hold 15 of the 16 places: a 16th client is served while
        // they are all still held (long before their 10 s deadline).
        std::vector<Fd> held;
        for (int i = 0; i < 15; ++i) {
            held.push_back(stuck(i));
            REQUIRE(held.back());
        }
        HttpReply r16 = http_get(sp, "/metrics");
        INFO(r16.error);
        CHECK(r16.status == 200);
        CHECK(parse_exposition(r16.body).errors.empty());
        int open_silent = 0, silent = 0;
        for (int i = 0; i < 15; ++i)
            if (i % 4 != 2) {
                ++silent;
                open_silent += still_open(held[i].get()) ? 1 : 0;
            }
        CHECK(open_silent == silent);

        // 20 stuck clients: each of the last four took the place of the oldest one,
        // which the server closed. The relay goes on as usual.
        for (int i = 15; i < 20; ++i) {
            held.push_back(stuck(i));
            REQUIRE(held.back());
        }
        int evicted = 0;
        for (int i = 0; i < 4; ++i) {
            Io st = wait_closed(held[i].get(), kIo);
            evicted += (st == Io::Eof || st == Io::Reset) ? 1 : 0;
        }
        CHECK(evicted == 4);
        int relay_failures = 0;
        std::string relay_error;
        for (int i = 0; i < 30; ++i) {
            std::string data = Pattern(900 + i).bytes(100 + i);
            Fnv1a f;
            f.update(data.data(), data.size());
            Fd c = connect_to(kLo, lp);
            std::string got;
            bool ok = c && send_all(c.get(), data, kIo) == Io::Ok && ::shutdown(c.get(), SHUT_WR) == 0 &&
                      recv_until_eof(c.get(), got, kIo) == Io::Eof &&
                      got == std::to_string(data.size()) + " " + f.hex() + "\n";
            if (!ok && relay_failures++ == 0) relay_error = "relay " + std::to_string(i) + ": '" + got + "'";
        }
        INFO(relay_error);
        CHECK(relay_failures == 0);
        int open_now = 0;
        for (int i = 4; i < 20; ++i)
            if (i % 4 != 2) open_now += still_open(held[i].get()) ? 1 : 0;
        CHECK(open_now > 0);  // the relay checks ran while the stuck clients were held

        // A scrape while the places are full takes the place of the oldest (held[4]).
        HttpReply late = http_get(sp, "/metrics", 30.0);
        INFO(late.error);
        CHECK(late.status == 200);
        Exposition lex = parse_exposition(late.body);
        CHECK(lex.errors.empty());
        CHECK(value_of(lex.values, "iawlb_accepted_connections_total") == 130);
        Io st4 = wait_closed(held[4].get(), kIo);
        CHECK((st4 == Io::Eof || st4 == Io::Reset));
        // The others are closed at their deadline, 10 s after their connect (the
        // never-reading ones after their response).
        int closed = 0;
        Deadline all(40.0);
        for (int i = 5; i < 20; ++i) {
            Io st = wait_closed(held[i].get(), std::max(0.1, all.left()));
            closed += (st == Io::Eof || st == Io::Reset) ? 1 : 0;
        }
        CHECK(closed == 15);
        CHECK(lb->running());
    }
}

// ===========================================================================
// 5. PROXY protocol
// ===========================================================================

TEST_CASE("PROXY protocol (--send-proxy, --send-proxy-v2): the destination gets the exact header, then the bytes",
          "[integration][ops]") {
    const std::string payload = "hello from the client\r\nsecond line\n";
    struct Variant {
        const char* name;
        const char* option;
        bool v2;
        bool v6;
        bool wildcard;  // listen on a bare PORT (dual stack), client over IPv4
    };
    const Variant variants[] = {
        {"v1, IPv4", "--send-proxy", false, false, false},
        {"v1, IPv6", "--send-proxy", false, true, false},
        {"v2, IPv4", "--send-proxy-v2", true, false, false},
        {"v2, IPv6", "--send-proxy-v2", true, true, false},
        {"v1, IPv4 client of a dual-stack listener", "--send-proxy", false, false, true},
        {"v2, IPv4 client of a dual-stack listener", "--send-proxy-v2", true, false, true},
    };
    for (const Variant& var : variants) {
        DYNAMIC_SECTION(var.name) {
            if (var.v6 && !ipv6_loopback_available()) {
                WARN("::1 is not available here: IPv6 part skipped");
                return;
            }
            const std::string host = var.v6 ? "::1" : kLo;
            Fd dl = listen_socket(host, 0);
            REQUIRE(dl);
            const uint16_t dport = local_port(dl.get());
            const uint16_t lp = var.wildcard ? free_port_both() : free_port(host);
            const uint16_t sp = free_port();
            REQUIRE(lp != 0);
            const std::string listen = var.wildcard ? std::to_string(lp) : listen_arg(lp, host);
            auto lb = start_balancer({var.option, "--stats", listen_arg(sp), listen, listen_arg(dport, host)});

            for (int round = 0; round < 2; ++round) {  // two clients: each gets its own header
                ProxyRun run = run_through_proxy(dl.get(), host, lp, payload);
                INFO(var.name << ", client " << round << ": " << run.error);
                REQUIRE(run.error == "");
                const std::string header = var.v2 ? expected_v2(var.v6, host, host, run.client_port, lp)
                                                  : expected_v1(var.v6, host, host, run.client_port, lp);
                INFO("received: " << printable(run.received) << "\n    hex: " << hex(run.received)
                                  << "\nexpected: " << printable(header + payload));
                CHECK(run.received == header + payload);
                CHECK(run.reply == "pong\n");
                if (round == 0) maybe_show(std::string(var.name) + ": what the destination received", run.received);
                if (round == 1) {
                    // The header's bytes count as bytes sent to the destination.
                    const std::string series = dest_series("iawlb_destination_sent_bytes_total", listen_arg(dport, host));
                    bool counted = wait_metric(sp, series, 2.0 * double(header.size() + payload.size()), kIo);
                    INFO(show_metrics(scrape(sp)));
                    CHECK(counted);
                }
            }
        }
    }
}

// ===========================================================================
// 5a. Accepting the PROXY protocol (--accept-proxy, --trusted, --preread-timeout)
// ===========================================================================

namespace {

// The version 2 signature, taken from the header that expected_v2 builds.
std::string v2_signature() { return expected_v2(false, "0.0.0.0", "0.0.0.0", 0, 0).substr(0, 12); }

// A version 2 header of any shape: the signature, the version/command and the
// family/transport bytes, the length field, then `body` as it is.
std::string v2_raw(unsigned char ver_cmd, unsigned char fam_tr, size_t len, const std::string& body = "") {
    std::string h = v2_signature();
    h += static_cast<char>(ver_cmd);
    h += static_cast<char>(fam_tr);
    h += static_cast<char>((len >> 8) & 0xff);
    h += static_cast<char>(len & 0xff);
    return h + body;
}

// `base` (a version 2 header from expected_v2) with `n` bytes of NOOP TLVs (type
// 0x04, values of at most 997 bytes of Pattern(seed)) after its addresses, and
// its length field grown to match. n must be 0 or at least 3.
std::string with_noop_tlvs(std::string base, size_t n, uint64_t seed) {
    Pattern pat(seed);
    std::string tlvs;
    while (tlvs.size() < n) {
        const size_t left = n - tlvs.size();
        size_t value = std::min<size_t>(997, left - 3);
        if (left - 3 - value > 0 && left - 3 - value < 3) value -= 3;  // leave room for a whole TLV
        tlvs += '\x04';
        tlvs += static_cast<char>(value >> 8);
        tlvs += static_cast<char>(value & 0xff);
        tlvs += pat.bytes(value);
    }
    const size_t len = ((size_t(static_cast<unsigned char>(base[14])) << 8) | static_cast<unsigned char>(base[15])) + n;
    base[14] = static_cast<char>(len >> 8);
    base[15] = static_cast<char>(len & 0xff);
    return base + tlvs;
}

// A plain listening socket as the destination, and the balancer's two ports.
struct Front {
    Fd dl;
    uint16_t dport = 0, lp = 0, sp = 0;
    std::string dest() const { return listen_arg(dport); }
};
Front make_front() {
    Front f;
    f.dl = listen_socket(kLo, 0);
    if (f.dl) f.dport = local_port(f.dl.get());
    const auto ports = free_ports(2);
    if (ports.size() == 2) {
        f.lp = ports[0];
        f.sp = ports[1];
    }
    REQUIRE(f.dl);  // every test of the section needs both
    REQUIRE(f.lp != 0);
    return f;
}

// A balancer with --accept-proxy --trusted 127.0.0.1 -v --stats in front of f,
// with `extra` options (a --send-proxy option among them, or not).
Balancer start_accepting(const Front& f, std::vector<std::string> extra) {
    std::vector<std::string> args = {"-v", "--accept-proxy", "--trusted", kLo, "--stats", listen_arg(f.sp)};
    args.insert(args.end(), extra.begin(), extra.end());
    args.push_back(listen_arg(f.lp));
    args.push_back(f.dest());
    return start_balancer(args);
}

// "" if no connection reaches the listener `dl` within `seconds`, else what that
// connection received so far.
std::string stray_connection(int dl, double seconds) {
    Fd s = accept_one(dl, seconds);
    if (!s) return "";
    std::string got;
    sleep_s(0.05);
    recv_available(s.get(), got);
    return "the destination got a connection, with '" + printable(got.substr(0, 120)) + "'";
}

// A client that sends `bytes` (then half-closes, if asked) and waits for the
// balancer to end it: "closed" if it did so (EOF or reset) without sending a
// byte, else what happened. *port is the client's port.
std::string closed_after(uint16_t lp, const std::string& bytes, bool half_close, double timeout,
                         uint16_t* port = nullptr) {
    int e = 0;
    Fd c = connect_to(kLo, lp, kIo, &e);
    if (!c) return std::string("connect: ") + std::strerror(e);
    if (port) *port = local_port(c.get());
    Io st = bytes.empty() ? Io::Ok : send_all(c.get(), bytes, kIo);
    if (st == Io::Ok && half_close) ::shutdown(c.get(), SHUT_WR);
    if (st != Io::Ok && st != Io::Reset) return std::string("send: ") + io_name(st);
    size_t discarded = 0;
    st = wait_closed(c.get(), timeout, &discarded);
    if ((st == Io::Eof || st == Io::Reset) && discarded == 0) return "closed";
    return std::string(io_name(st)) + " after " + std::to_string(discarded) + " bytes from the balancer";
}

double metric(uint16_t sp, const std::string& series) { return value_of(scrape(sp), series); }

}  // namespace

TEST_CASE("accepting the PROXY protocol (--accept-proxy): the header in pieces is consumed, its addresses sent on",
          "[integration][ops][accept-proxy]") {
    struct Onward {
        const char* option;
        bool v2;
    };
    for (const Onward& on : {Onward{"--send-proxy-v2", true}, Onward{"--send-proxy", false}}) {
        DYNAMIC_SECTION("then " << on.option) {
            Front f = make_front();
            auto lb = start_accepting(f, {on.option});
            auto onward = [&](bool v6, const std::string& src, const std::string& dst, uint16_t sp, uint16_t dp) {
                return on.v2 ? expected_v2(v6, src, dst, sp, dp) : expected_v1(v6, src, dst, sp, dp);
            };
            const std::string payload = "hello from behind a proxy\r\n" + Pattern(77).bytes(3000);
            const std::string big = Pattern(78).bytes(300000);
            const std::string tlv_header =
                with_noop_tlvs(expected_v2(true, "2001:db8::7", "2001:db8::1", 40000, 443), 4000, 79);
            REQUIRE(tlv_header.size() == 16 + 36 + 4000);
            struct Run {
                const char* what;
                std::string header;  // what the client sends first
                size_t piece;        // in pieces of this many bytes
                std::string more;    // sent with the header (its last piece spans the boundary)
                std::string rest;    // sent after the destination has its connection
                std::string want;    // the header the destination must get
                std::string logged;  // the client as the -v line names it
            };
            const Run runs[] = {
                {"v1 TCP4, one byte at a time", "PROXY TCP4 192.0.2.7 198.51.100.9 40000 8443\r\n", 1, "", payload,
                 onward(false, "192.0.2.7", "198.51.100.9", 40000, 8443), "192.0.2.7:40000"},
                {"v2 INET6, 5 bytes at a time", expected_v2(true, "2001:db8::7", "2001:db8::1", 40000, 443), 5, "",
                 payload, onward(true, "2001:db8::7", "2001:db8::1", 40000, 443), "[2001:db8::7]:40000"},
                {"v2 INET6 with 4000 bytes of TLVs, in pieces of 700 with the payload's start", tlv_header, 700,
                 payload.substr(0, 900), payload.substr(900), onward(true, "2001:db8::7", "2001:db8::1", 40000, 443),
                 "[2001:db8::7]:40000"},
                {"v2 INET, in one send with the payload, then 300 kB", expected_v2(false, "192.0.2.8", "198.51.100.10", 1, 65535),
                 1 << 20, payload, big, onward(false, "192.0.2.8", "198.51.100.10", 1, 65535), "192.0.2.8:1"},
                {"v1 TCP6, in one send with the payload", "PROXY TCP6 2001:db8::8 ::1 65535 0\r\n", 1 << 20, payload, "",
                 onward(true, "2001:db8::8", "::1", 65535, 0), "[2001:db8::8]:65535"},
            };
            int served = 0;
            std::vector<uint16_t> client_ports;
            for (const Run& k : runs) {
                INFO(on.option << ", " << k.what);
                ProxyRun run = run_with_header(f.dl.get(), f.lp, k.header + k.more, k.piece, 0.003, k.rest);
                INFO(run.error);
                REQUIRE(run.error == "");
                const std::string want = k.want + k.more + k.rest;
                const bool exact = run.received == want;
                INFO("received " << run.received.size() << " bytes, wanted " << want.size() << "\nreceived: "
                                 << printable(run.received.substr(0, 200)) << "\nexpected: " << printable(want.substr(0, 200)));
                CHECK(exact);
                CHECK(run.reply == "pong\n");
                const std::string line = k.logged + " -> " + f.dest() + " done ";
                CHECK(lb->wait_for_log(line, kIo));
                served += exact ? 1 : 0;
                client_ports.push_back(run.client_port);
            }
            INFO(lb->log());
            auto m = scrape(f.sp);
            INFO(show_metrics(m));
            CHECK(value_of(m, dest_series("iawlb_destination_connections_total", f.dest())) == double(std::size(runs)));
            CHECK(value_of(m, "iawlb_bad_proxy_headers_total") == 0);
            CHECK(value_of(m, "iawlb_denied_connections_total") == 0);
            CHECK(served == int(std::size(runs)));
            // The real address of the clients appears in no connection line.
            for (uint16_t p : client_ports) CHECK(count_of(lb->log(), "127.0.0.1:" + std::to_string(p) + " ") == 0);
        }
    }
}

TEST_CASE("accepting the PROXY protocol: LOCAL, UNKNOWN, UNSPEC, UNIX and DGRAM headers keep the real addresses",
          "[integration][ops][accept-proxy]") {
    const std::string block4 = expected_v2(false, "192.0.2.7", "198.51.100.9", 40000, 8443).substr(16);
    const std::string block6 = expected_v2(true, "2001:db8::7", "2001:db8::1", 40000, 443).substr(16);
    struct Case {
        const char* what;
        std::string header;
    };
    const Case cases[] = {
        {"v2 LOCAL", v2_raw(0x20, 0x00, 0)},
        {"v2 LOCAL with INET addresses", v2_raw(0x20, 0x11, 12, block4)},
        {"v2 LOCAL with INET6 addresses and a TLV", v2_raw(0x20, 0x21, 36 + 5, block6 + std::string("\x04\x00\x02zz", 5))},
        {"v1 UNKNOWN", "PROXY UNKNOWN\r\n"},
        {"v1 UNKNOWN with addresses", "PROXY UNKNOWN 192.0.2.7 198.51.100.9 40000 8443\r\n"},
        {"v2 PROXY UNSPEC", v2_raw(0x21, 0x00, 0)},
        {"v2 PROXY UNIX STREAM, 216 bytes", v2_raw(0x21, 0x31, 216, std::string(216, 'u'))},
        {"v2 PROXY INET DGRAM", v2_raw(0x21, 0x12, 12, block4)},
        {"v2 PROXY INET6 DGRAM", v2_raw(0x21, 0x22, 36, block6)},
    };
    const std::string payload = "after a header that names nobody\n";
    for (bool v2 : {true, false}) {
        DYNAMIC_SECTION((v2 ? "then --send-proxy-v2" : "then --send-proxy")) {
            Front f = make_front();
            auto lb = start_accepting(f, {v2 ? "--send-proxy-v2" : "--send-proxy"});
            for (const Case& k : cases) {
                INFO(k.what << ": '" << printable(k.header) << "'");
                ProxyRun run = run_with_header(f.dl.get(), f.lp, k.header + payload, 7, 0.002);
                INFO(run.error);
                REQUIRE(run.error == "");
                const std::string want = (v2 ? expected_v2(false, kLo, kLo, run.client_port, f.lp)
                                             : expected_v1(false, kLo, kLo, run.client_port, f.lp)) + payload;
                INFO("received: " << printable(run.received) << "\nexpected: " << printable(want));
                CHECK(run.received == want);
                CHECK(run.reply == "pong\n");
                CHECK(lb->wait_for_log("127.0.0.1:" + std::to_string(run.client_port) + " -> " + f.dest() + " done ", kIo));
            }
            auto m = scrape(f.sp);
            INFO(show_metrics(m) << "\nlog:\n" << lb->log());
            CHECK(value_of(m, "iawlb_bad_proxy_headers_total") == 0);
            CHECK(value_of(m, dest_series("iawlb_destination_connections_total", f.dest())) == double(std::size(cases)));
            CHECK(count_of(lb->log(), "192.0.2.7") == 0);
            CHECK(count_of(lb->log(), "2001:db8") == 0);
        }
    }
}

TEST_CASE("accepting the PROXY protocol: a malformed header is closed, counted, and never reaches a destination",
          "[integration][ops][accept-proxy]") {
    Front f = make_front();
    // A long preread timeout: every close below is the header's verdict, not the timer's.
    auto lb = start_accepting(f, {"--send-proxy-v2", "--preread-timeout", "60s"});
    const std::string block4 = expected_v2(false, "192.0.2.7", "198.51.100.9", 40000, 8443).substr(16);
    const std::string t4 = "PROXY TCP4 192.0.2.7 198.51.100.9 ";
    struct Case {
        const char* what;
        std::string bytes;
        bool half_close;  // the client ends its side after the bytes
    };
    const Case cases[] = {
        {"plain HTTP", "GET / HTTP/1.0\r\n\r\n", false},
        {"v1 without CR", t4 + "40000 8443\nmore bytes\n", false},
        {"120 bytes without LF", "PROXY TCP4 " + std::string(109, '9'), false},
        {"TCP4 with IPv6 addresses", "PROXY TCP4 2001:db8::7 2001:db8::1 40000 443\r\n", false},
        {"port 65536", t4 + "65536 8443\r\n", false},
        {"port with a leading zero", t4 + "040000 8443\r\n", false},
        {"5 words", t4 + "40000\r\n", false},
        {"v2 version 1", v2_raw(0x11, 0x11, 12, block4), false},
        {"v2 family 4", v2_raw(0x21, 0x41, 12, block4), false},
        {"v2 command 2", v2_raw(0x22, 0x11, 12, block4), false},
        {"v2 INET with length 8", v2_raw(0x21, 0x11, 8, block4.substr(0, 8)), false},
        {"closed before any byte", "", true},
        {"closed inside a v1 header", "PROXY TCP4 192.0.2.7 198.5", true},
        {"closed inside a v2 header's addresses", v2_raw(0x21, 0x11, 12, block4.substr(0, 5)), true},
        {"closed inside a v2 header's TLVs", v2_raw(0x21, 0x11, 12 + 600, block4 + std::string(300, '\x04')), true},
    };
    int closed = 0;
    std::vector<uint16_t> ports;
    for (const Case& k : cases) {
        uint16_t port = 0;
        const std::string r = closed_after(f.lp, k.bytes, k.half_close, kIo, &port);
        INFO(k.what << ": '" << printable(k.bytes) << "': " << r << "\nlog:\n" << lb->log());
        CHECK(r == "closed");
        closed += r == "closed" ? 1 : 0;
        ports.push_back(port);
        // Its -v line names the peer; once a v2 header's addresses were complete (only its
        // TLVs missing), the balancer may name the address they hold instead.
        const std::string peer = "127.0.0.1:" + std::to_string(port) + " -> - bad-header ";
        const std::string named = "192.0.2.7:40000 -> - bad-header ";
        const bool may_name = k.bytes.size() > 28 && k.bytes.compare(0, 12, v2_signature()) == 0;
        CHECK(wait_until([&] {
            const std::string log = lb->log();
            return log.find(peer) != std::string::npos || (may_name && log.find(named) != std::string::npos);
        }, kIo));
    }
    const std::string stray = stray_connection(f.dl.get(), 0.3);
    CHECK(stray == "");
    const double n = double(std::size(cases));
    CHECK(wait_metric(f.sp, "iawlb_bad_proxy_headers_total", n, kIo));
    auto m = scrape(f.sp);
    INFO(show_metrics(m) << "\nlog:\n" << lb->log());
    CHECK(value_of(m, "iawlb_bad_proxy_headers_total") == n);
    CHECK(value_of(m, dest_series("iawlb_destination_connections_total", f.dest())) == 0);
    CHECK(value_of(m, "iawlb_denied_connections_total") == 0);
    CHECK(value_of(m, "iawlb_active_connections") == 0);
    CHECK(count_lines(lb->log(), {" -> - bad-header "}) == int(std::size(cases)));
    CHECK(closed == int(std::size(cases)));
    // And the next client with a good header is served.
    ProxyRun run = run_with_header(f.dl.get(), f.lp, "PROXY TCP4 192.0.2.7 198.51.100.9 40000 8443\r\nafter\n", 1 << 20, 0);
    INFO(run.error);
    REQUIRE(run.error == "");
    CHECK(run.received == expected_v2(false, "192.0.2.7", "198.51.100.9", 40000, 8443) + "after\n");
    CHECK(lb->running());
}

TEST_CASE("accepting the PROXY protocol: a peer outside --trusted is closed by the acceptor, whatever its header",
          "[integration][ops][accept-proxy]") {
    const std::string header = "PROXY TCP4 10.1.2.3 10.0.0.1 40000 8443\r\npayload\n";
    SECTION("--trusted 10.0.0.0/8: 127.0.0.1 is not a trusted proxy") {
        Front f = make_front();
        auto lb = start_balancer({"-v", "--accept-proxy", "--trusted", "10.0.0.0/8", "--send-proxy-v2", "--stats",
                                  listen_arg(f.sp), listen_arg(f.lp), f.dest()});
        uint16_t port = 0;
        const std::string r = closed_after(f.lp, header, false, kIo, &port);
        CHECK(r == "closed");
        CHECK(stray_connection(f.dl.get(), 0.3) == "");
        CHECK(wait_metric(f.sp, "iawlb_denied_connections_total", 1, kIo));
        auto m = scrape(f.sp);
        INFO(show_metrics(m) << "\nlog:\n" << lb->log());
        CHECK(value_of(m, "iawlb_denied_connections_total") == 1);
        CHECK(value_of(m, "iawlb_bad_proxy_headers_total") == 0);
        CHECK(value_of(m, dest_series("iawlb_destination_connections_total", f.dest())) == 0);
        CHECK(lb->wait_for_log("127.0.0.1:" + std::to_string(port) + " is not a trusted proxy", kIo));
        CHECK(count_of(lb->log(), "10.1.2.3") == 0);  // its header was never read
    }
    SECTION("a second --trusted network admits it") {
        Front f = make_front();
        auto lb = start_balancer({"--accept-proxy", "--trusted", "10.0.0.0/8", "--trusted", "127.0.0.0/8",
                                  "--send-proxy-v2", "--stats", listen_arg(f.sp), listen_arg(f.lp), f.dest()});
        ProxyRun run = run_with_header(f.dl.get(), f.lp, header, 1 << 20, 0);
        INFO(run.error);
        REQUIRE(run.error == "");
        CHECK(run.received == expected_v2(false, "10.1.2.3", "10.0.0.1", 40000, 8443) + "payload\n");
        CHECK(metric(f.sp, "iawlb_denied_connections_total") == 0);
    }
}

TEST_CASE("accepting the PROXY protocol: --preread-timeout closes a client whose header is late, and counts it",
          "[integration][ops][accept-proxy]") {
    Front f = make_front();
    auto lb = start_accepting(f, {"--send-proxy-v2", "--preread-timeout", "300ms"});
    const double bounded = 10.0;  // far more than 300 ms, for a loaded machine
    std::vector<uint16_t> ports(3);
    // A silent client, one that stops inside its header, and one inside a v2 header.
    CHECK(closed_after(f.lp, "", false, bounded, &ports[0]) == "closed");
    CHECK(closed_after(f.lp, "PROXY TCP4 192.0", false, bounded, &ports[1]) == "closed");
    CHECK(closed_after(f.lp, v2_signature() + "\x21\x11", false, bounded, &ports[2]) == "closed");
    for (uint16_t p : ports)
        CHECK(lb->wait_for_log("127.0.0.1:" + std::to_string(p) + " -> - preread-timeout ", kIo));

    // A header trickled a byte every 100 ms (4.7 s for the whole) is cut off: the
    // time counts from the connect, not from the last byte.
    int e = 0;
    Fd c = connect_to(kLo, f.lp, kIo, &e);
    REQUIRE(c);
    const std::string slow = "PROXY TCP4 192.0.2.7 198.51.100.9 40000 8443\r\n";
    bool cut = false;
    for (size_t i = 0; i < slow.size() && !cut; ++i) {
        std::string got;
        Io st = recv_available(c.get(), got);
        cut = st != Io::Ok || !got.empty() || send_all(c.get(), slow.substr(i, 1), kIo) != Io::Ok;
        if (!cut) sleep_s(0.1);
    }
    Io st = wait_closed(c.get(), bounded);
    CHECK((st == Io::Eof || st == Io::Reset));
    c.reset();
    CHECK(stray_connection(f.dl.get(), 0.3) == "");

    CHECK(wait_metric(f.sp, "iawlb_bad_proxy_headers_total", 4, kIo));
    auto m = scrape(f.sp);
    INFO(show_metrics(m) << "\nlog:\n" << lb->log());
    CHECK(value_of(m, "iawlb_bad_proxy_headers_total") == 4);
    CHECK(value_of(m, dest_series("iawlb_destination_connections_total", f.dest())) == 0);
    CHECK(count_lines(lb->log(), {" -> - preread-timeout "}) == 4);

    // The balancer goes on serving a client that sends its header at once.
    ProxyRun run = run_with_header(f.dl.get(), f.lp, "PROXY TCP4 192.0.2.9 198.51.100.9 40001 8443\r\nok\n", 1 << 20, 0);
    INFO(run.error);
    REQUIRE(run.error == "");
    CHECK(run.received == expected_v2(false, "192.0.2.9", "198.51.100.9", 40001, 8443) + "ok\n");
    CHECK(run.reply == "pong\n");
}

TEST_CASE("accepting the PROXY protocol: --allow and --deny judge the header's address, after it was read",
          "[integration][ops][accept-proxy][acl]") {
    struct Rules {
        const char* name;
        std::vector<std::string> options;
    };
    for (const Rules& rules : {Rules{"--deny 192.0.2.0/24", {"--deny", "192.0.2.0/24"}},
                               Rules{"--allow 198.51.100.0/24 (and not the proxy's own 127.0.0.1)",
                                     {"--allow", "198.51.100.0/24"}}}) {
        DYNAMIC_SECTION(rules.name) {
            Front f = make_front();
            std::vector<std::string> extra = rules.options;
            extra.push_back("--send-proxy-v2");
            auto lb = start_accepting(f, extra);
            // Refused: the header names 192.0.2.7 (sent in two pieces).
            const std::string refused = "PROXY TCP4 192.0.2.7 203.0.113.1 40000 443\r\nsecret\n";
            int e = 0;
            Fd c = connect_to(kLo, f.lp, kIo, &e);
            REQUIRE(c);
            Io st = send_in_pieces(c.get(), refused, 20, 0.01);
            CHECK((st == Io::Ok || st == Io::Reset));
            size_t discarded = 0;
            st = wait_closed(c.get(), kIo, &discarded);
            CHECK((st == Io::Eof || st == Io::Reset));
            CHECK(discarded == 0);
            c.reset();
            CHECK(stray_connection(f.dl.get(), 0.3) == "");
            CHECK(wait_metric(f.sp, "iawlb_denied_connections_total", 1, kIo));
            CHECK(lb->wait_for_log("192.0.2.7:40000 denied by the access rules", kIo));
            CHECK(lb->wait_for_log("192.0.2.7:40000 -> - denied ", kIo));
            // Served: the header names 198.51.100.1.
            ProxyRun run =
                run_with_header(f.dl.get(), f.lp, "PROXY TCP4 198.51.100.1 203.0.113.1 40001 443\r\nhello\n", 9, 0.002);
            INFO(run.error);
            REQUIRE(run.error == "");
            CHECK(run.received == expected_v2(false, "198.51.100.1", "203.0.113.1", 40001, 443) + "hello\n");
            CHECK(run.reply == "pong\n");
            CHECK(lb->wait_for_log("198.51.100.1:40001 -> " + f.dest() + " done ", kIo));
            auto m = scrape(f.sp);
            INFO(show_metrics(m) << "\nlog:\n" << lb->log());
            CHECK(value_of(m, "iawlb_denied_connections_total") == 1);
            CHECK(value_of(m, "iawlb_bad_proxy_headers_total") == 0);
            CHECK(value_of(m, dest_series("iawlb_destination_connections_total", f.dest())) == 1);
        }
    }
}

TEST_CASE("accepting the PROXY protocol: -a source hashes the header's address, not the proxy's",
          "[integration][ops][accept-proxy][affinity]") {
    auto a = Backend::make(Kind::Name, "A");
    auto b = Backend::make(Kind::Name, "B");
    const auto ports = free_ports(1);
    REQUIRE(ports.size() == 1);
    const uint16_t lp = ports[0];
    auto lb = start_balancer({"--accept-proxy", "--trusted", kLo, "-a", "source", listen_arg(lp), a->address(),
                              b->address()});
    // 24 client addresses, each twice, from other ports: each keeps its destination,
    // and they do not all hash to one (they would, were 127.0.0.1 hashed).
    std::map<std::string, int> per_answer;
    int moved = 0, errors = 0;
    std::string first_problem;
    for (int i = 0; i < 24; ++i) {
        std::string answer[2];
        for (int round = 0; round < 2; ++round) {
            const std::string header = "PROXY TCP4 10.0." + std::to_string(i * 7 % 256) + "." + std::to_string(i + 1) +
                                       " 10.255.0.1 " + std::to_string(1000 + i + 100 * round) + " 80\r\n";
            int e = 0;
            Fd c = connect_to(kLo, lp, kIo, &e);
            std::string got;
            const bool ok = c && send_all(c.get(), header, kIo) == Io::Ok && ::shutdown(c.get(), SHUT_WR) == 0 &&
                            recv_until_eof(c.get(), got, kIo) == Io::Eof && (got == "A\n" || got == "B\n");
            if (!ok && errors++ == 0) first_problem = "client " + std::to_string(i) + ": '" + printable(got) + "'";
            answer[round] = got;
        }
        if (answer[0] != answer[1] && moved++ == 0)
            first_problem += " client " + std::to_string(i) + " went to " + answer[0] + " then " + answer[1];
        per_answer[answer[0]]++;
    }
    INFO(first_problem << "\n" << show(per_answer));
    CHECK(errors == 0);
    CHECK(moved == 0);
    CHECK(per_answer["A\n"] > 0);
    CHECK(per_answer["B\n"] > 0);
}

TEST_CASE("command line: --accept-proxy needs --trusted, --trusted needs --accept-proxy, --preread-timeout > 0",
          "[integration][ops][accept-proxy]") {
    const auto ports = free_ports(2);
    REQUIRE(ports.size() == 2);
    const std::string L = listen_arg(ports[0]), D = listen_arg(ports[1]);
    struct Case {
        std::vector<std::string> args;
        std::string names;
    };
    const std::vector<Case> cases = {
        {{"--accept-proxy", L, D}, "--trusted"},
        {{"--trusted", "127.0.0.1", L, D}, "--trusted"},
        {{"--accept-proxy", "--trusted", "127.0.0.1", "--preread-timeout", "0", L, D}, "--preread-timeout"},
        {{"--accept-proxy", "--trusted", "127.0.0.1/8", L, D}, "'127.0.0.1/8'"},
    };
    for (const Case& k : cases) {
        std::vector<std::string> argv = {iawlb_path()};
        argv.insert(argv.end(), k.args.begin(), k.args.end());
        Process p(argv);
        ExitStatus st = p.wait_exit(kIo);
        const std::string log = p.log();
        INFO("command: " << p.command() << "\n" << st.str() << ", output:\n" << log);
        CHECK(st.str() == "exit code 2");
        CHECK(split_lines(log).size() == 1);
        CHECK(log.compare(0, 7, "iawlb: ") == 0);
        CHECK(log.find(k.names) != std::string::npos);
        CHECK(sanitizer_report(log).empty());
    }
}

// ===========================================================================
// 6. Restarts with --reuseport
// ===========================================================================

namespace {

// A client connect that reports the local port even when it fails, so that a lost
// client can be looked for in the balancers' -v logs.
Fd connect_noting_port(const std::string& host, uint16_t port, double timeout, int* err, uint16_t* local) {
    *err = 0;
    *local = 0;
    SockAddr a;
    if (!make_addr(host, port, a)) {
        *err = EINVAL;
        return Fd();
    }
    Fd s = tcp_socket(a.family());
    if (!s) {
        *err = errno;
        return Fd();
    }
    int one = 1;
    ::setsockopt(s.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int r = ::connect(s.get(), a.ptr(), a.len);
    int e = errno;
    *local = local_port(s.get());
    if (r == 0) return s;
    if (e != EINPROGRESS) {
        *err = e;
        return Fd();
    }
    Deadline d(timeout);
    if (!wait_ready(s.get(), POLLOUT, d)) {
        *err = ETIMEDOUT;
        return Fd();
    }
    int soerr = 0;
    socklen_t len = sizeof soerr;
    ::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &soerr, &len);
    if (soerr != 0) {
        *err = soerr;
        return Fd();
    }
    return s;
}

bool tcp_migrate_req_on() {
    std::string v = read_file("/proc/sys/net/ipv4/tcp_migrate_req");
    return !v.empty() && v[0] == '1';
}

}  // namespace

TEST_CASE("restart with --reuseport: old and new balancer on one port, SIGTERM to the old, no client lost",
          "[integration][ops]") {
    // Each generation of balancer has a backend of its own, a greeter that says its
    // name, so every answer tells which balancer relayed it.
    constexpr int kGens = 4, kThreads = 2;
    std::vector<std::unique_ptr<Backend>> backends;
    for (int g = 0; g < kGens; ++g) backends.push_back(Backend::make(Kind::Greeter, "GEN" + std::to_string(g)));
    const uint16_t lp = free_port();
    auto start_gen = [&](int g) {
        return start_balancer({"-v", "--reuseport", "--grace", "20s", listen_arg(lp), backends[g]->address()});
    };
    auto answered_by = [](const std::string& got, const std::string& msg) {
        for (int g = 0; g < kGens; ++g)
            if (got == "HELLO GEN" + std::to_string(g) + "\n" + msg) return g;
        return -1;
    };
    std::vector<Balancer> gens;
    gens.push_back(start_gen(0));
    gens.push_back(start_gen(1));

    // 1. Clients already waiting in the old balancer's listening socket are accepted by
    // its drain and served. Stopped (SIGSTOP), generation 0 accepts nothing, so the
    // clients that the kernel gives it wait in its queue; then SIGTERM and SIGCONT.
    {
        constexpr int K = 24;  // about half go to each: all 24 to one has a chance of 2^-23
        REQUIRE(gens[0]->send_signal(SIGSTOP));
        std::vector<Fd> cs;
        for (int k = 0; k < K; ++k) {
            int e = 0;
            cs.push_back(connect_once(kLo, lp, kIo, &e));
            INFO("client " << k << ": " << std::strerror(e));
            REQUIRE(cs.back());
            REQUIRE(send_all(cs.back().get(), "queued " + std::to_string(k) + "\n", kIo) == Io::Ok);
            ::shutdown(cs.back().get(), SHUT_WR);
        }
        REQUIRE(gens[0]->send_signal(SIGTERM));
        REQUIRE(gens[0]->send_signal(SIGCONT));
        int by[kGens] = {}, bad = 0;
        std::string first_bad;
        for (int k = 0; k < K; ++k) {
            const std::string msg = "queued " + std::to_string(k) + "\n";
            std::string got;
            Io st = recv_until_eof(cs[k].get(), got, kIo);
            int g = st == Io::Eof ? answered_by(got, msg) : -1;
            if (g >= 0) by[g]++;
            else if (bad++ == 0) first_bad = "client " + std::to_string(k) + ": " + io_name(st) + " '" + printable(got) + "'";
        }
        ExitStatus st0 = gens[0]->wait_exit(40.0);
        INFO("served by generation 0 (stopped, then drained): " << by[0] << ", by generation 1: " << by[1] << "; "
                                                                << first_bad);
        CHECK(bad == 0);
        CHECK(by[0] >= 1);
        CHECK(by[0] + by[1] == K);
        CHECK(st0.str() == "exit code 0");
    }

    // 2. Two client threads open short connections continuously (bounded in count and
    // time) while generation g starts beside g-1 and g-1 gets SIGTERM, twice.
    struct Failure {
        std::string what;
        uint16_t port = 0;
        bool reset_no_data = false;  // reset before one byte of answer: maybe never accepted
        double at = 0;
    };
    struct Tally {
        std::atomic<long> ok[kGens] = {}, failed{0}, total{0}, after_exit{0};
        std::atomic<bool> gone[kGens] = {};  // generation g has exited
        std::atomic<bool> stop{false};
        std::mutex m;
        std::vector<Failure> failures;
        // Answered connections per local port: the kernel may give a port that a reset
        // connection had to a later one, which a balancer then logs.
        std::vector<std::atomic<int>> ok_on_port = std::vector<std::atomic<int>>(65536);
    } t;
    t.gone[0].store(true);
    const double t0 = now();
    auto client = [&t, lp, t0, answered_by](int id) {
        // Bounded by 60 s and 20000 connections. The bound was 6000, and three loaded gate
        // runs used it up while a slow (sanitized) new generation started, so the waits
        // for "both served" and "went on" could not be met: no client failed in them.
        Deadline limit(60.0);
        for (long i = 0; !t.stop.load() && !limit.expired() && t.total.load() < 20000; ++i) {
            bool gone_before[kGens];
            for (int g = 0; g < kGens; ++g) gone_before[g] = t.gone[g].load();
            const std::string msg = "ping " + std::to_string(id) + "/" + std::to_string(i) + "\n";
            Failure f;
            std::string got;
            int e = 0;
            Fd c = connect_noting_port(kLo, lp, 10.0, &e, &f.port);  // no retry: a refusal is a failure
            if (!c) {
                f.what = std::string("connect: ") + std::strerror(e);
                f.reset_no_data = e == ECONNRESET;
            } else {
                Io st = send_all(c.get(), msg, 10.0);
                if (st == Io::Ok) ::shutdown(c.get(), SHUT_WR);
                Io rs = st == Io::Ok ? recv_until_eof(c.get(), got, 10.0) : st;
                if (st != Io::Ok) f.what = std::string("send: ") + io_name(st);
                else if (rs != Io::Eof) f.what = std::string("recv: ") + io_name(rs) + " after '" + printable(got) + "'";
                else if (int g = answered_by(got, msg); g < 0) f.what = "wrong answer '" + printable(got) + "'";
                else {
                    t.ok[g].fetch_add(1);
                    t.ok_on_port[f.port].fetch_add(1);
                    if (gone_before[g]) t.after_exit.fetch_add(1);
                }
                f.reset_no_data = (st == Io::Reset || rs == Io::Reset) && got.empty();
            }
            t.total.fetch_add(1);
            if (!f.what.empty()) {
                f.at = now() - t0;
                t.failed.fetch_add(1);
                std::lock_guard<std::mutex> g(t.m);
                if (t.failures.size() < 20) t.failures.push_back(f);
            }
        }
    };
    std::vector<std::thread> clients;
    struct Joiner {  // stops and joins the clients on every way out of this test
        Tally& t;
        std::vector<std::thread>& th;
        ~Joiner() {
            t.stop.store(true);
            for (auto& x : th)
                if (x.joinable()) x.join();
        }
    } joiner{t, clients};
    for (int id = 0; id < kThreads; ++id) clients.emplace_back(client, id);

    bool warm = wait_until([&] { return t.ok[1].load() >= 200 || t.failed.load() > 10; }, 30.0);
    struct Switch {
        double term_at = 0, exit_at = 0;
        long at_term = 0, at_exit = 0;
        ExitStatus st;
    };
    std::vector<Switch> switches;
    bool both_served = true, went_on = true;
    for (int g = 2; g < kGens; ++g) {
        gens.push_back(start_gen(g));
        both_served = wait_until([&] { return t.ok[g].load() >= 100 || t.failed.load() > 10; }, 30.0) && both_served;
        Switch sw;
        sw.at_term = t.total.load();
        sw.term_at = now() - t0;
        REQUIRE(gens[g - 1]->send_signal(SIGTERM));
        sw.st = gens[g - 1]->wait_exit(40.0);
        t.gone[g - 1].store(true);
        sw.at_exit = t.total.load();
        sw.exit_at = now() - t0;
        switches.push_back(sw);
        went_on = wait_until([&] { return t.total.load() >= sw.at_exit + 300 || t.failed.load() > 10; }, 30.0) && went_on;
    }
    t.stop.store(true);
    for (auto& x : clients) x.join();

    // A client reset before any answer, that no balancer ever logged (-v logs every
    // connection it accepted), during a switch, was lost in the kernel: the handshake
    // completed in the old listening socket in the instant between the drain's last
    // accept and its close. The book documents that gap; only the sysctl
    // net.ipv4.tcp_migrate_req=1 closes it. Every other failure is the balancer's.
    // "Logged" counts the lines of the failure's local port beyond the answered
    // connections that had that port: one loaded gate run saw a reset client's port
    // given to a later client, whose line made the reset look accepted.
    std::string all_logs;
    for (auto& b : gens) all_logs += b->log();
    std::vector<int> lost_in_kernel(switches.size(), 0);
    int unexplained = 0;
    std::string report;
    for (const Failure& f : t.failures) {
        int in = -1;
        for (size_t k = 0; k < switches.size(); ++k)
            if (f.at >= switches[k].term_at && f.at <= switches[k].exit_at + 2.0) in = int(k);
        const bool logged = f.port != 0 && count_of(all_logs, "127.0.0.1:" + std::to_string(f.port) + " -> ")
                                                > size_t(t.ok_on_port[f.port].load());
        const bool kernel_gap = f.reset_no_data && !logged && f.port != 0 && in >= 0;
        if (kernel_gap) lost_in_kernel[in]++;
        else ++unexplained;
        char at[48];
        std::snprintf(at, sizeof at, " at %.3f s", f.at);
        report += "  client port " + std::to_string(f.port) + ": " + f.what + at +
                  (kernel_gap ? " (lost in the kernel's listen queue during a switch)" : "") + "\n";
    }
    for (size_t k = 0; k < switches.size(); ++k) {
        char line[160];
        std::snprintf(line, sizeof line,
                      "  switch %zu: SIGTERM at %.3f s after %ld connections, exit (%s) seen at %.3f s after %ld\n", k + 1,
                      switches[k].term_at, switches[k].at_term, switches[k].st.str().c_str(), switches[k].exit_at,
                      switches[k].at_exit);
        report += line;
    }
    long ok = 0;
    for (int g = 0; g < kGens; ++g) {
        ok += t.ok[g].load();
        report += "  GEN" + std::to_string(g) + " answered " + std::to_string(t.ok[g].load()) + "\n";
    }
    INFO("connections: " << t.total.load() << ", failed " << t.failed.load() << "\n" << report);
    CHECK(warm);
    CHECK(both_served);
    CHECK(went_on);
    CHECK(t.failures.size() == size_t(t.failed.load()));
    CHECK(unexplained == 0);
    CHECK(ok + t.failed.load() == t.total.load());
    CHECK(t.after_exit.load() == 0);  // no answer from a balancer that had exited
    long gap_total = 0;
    for (size_t k = 0; k < switches.size(); ++k) {
        INFO("switch " << k + 1);
        // At most one connection in flight per client thread can be in the queue.
        CHECK(lost_in_kernel[k] <= kThreads);
        gap_total += lost_in_kernel[k];
    }
    if (tcp_migrate_req_on()) {
        CHECK(gap_total == 0);
    } else if (gap_total > 0) {
        WARN(gap_total << " client(s) reset by the kernel in the instant between the old balancer's last accept and "
                          "its close (net.ipv4.tcp_migrate_req is 0; see the book, chapter Operations):\n"
                       << report);
    }
    for (int g = 0; g + 1 < kGens; ++g) {
        INFO("generation " << g);
        if (g >= 1) CHECK(switches[size_t(g - 1)].st.str() == "exit code 0");
        const std::string log = gens[size_t(g)]->log();
        CHECK(log.find("SIGTERM: no longer accepting") != std::string::npos);
        CHECK(log.find("main info: stopped") != std::string::npos);
    }
    CHECK(gens.back()->running());
}

TEST_CASE("without --reuseport on both, a second balancer on the same port exits 1 with one line",
          "[integration][ops]") {
    auto echo = Backend::make(Kind::Echo, "E");
    const auto ports = free_ports(3);
    REQUIRE(ports.size() == 3);
    const uint16_t lp = ports[0], sp = ports[1], lp2 = ports[2];
    struct Combo {
        const char* name;
        bool first, second;
    };
    for (const Combo& k : {Combo{"neither has it", false, false}, Combo{"only the first has it", true, false},
                           Combo{"only the second has it", false, true}}) {
        DYNAMIC_SECTION(k.name) {
            std::vector<std::string> a1 = {listen_arg(lp), echo->address()};
            if (k.first) a1.insert(a1.begin(), "--reuseport");
            auto first = start_balancer(a1);
            std::vector<std::string> a2 = {iawlb_path(), listen_arg(lp), echo->address()};
            if (k.second) a2.insert(a2.begin() + 1, "--reuseport");
            Process second(a2);
            ExitStatus st = second.wait_exit(kIo);
            const auto lines = split_lines(second.log());
            INFO(second.log());
            CHECK(st.str() == "exit code 1");
            REQUIRE(lines.size() == 1);
            CHECK(lines[0] == "iawlb: bind " + listen_arg(lp) + ": Address already in use");
            CHECK(sanitizer_report(second.log()).empty());
            CHECK(echo_check(kLo, lp, "the first one goes on\n") == "");
        }
    }
    SECTION("the statistics address in use") {
        Fd taken = listen_socket(kLo, sp);
        REQUIRE(taken);
        Process p({iawlb_path(), "--stats", listen_arg(sp), listen_arg(lp2), echo->address()});
        ExitStatus st = p.wait_exit(kIo);
        const auto lines = split_lines(p.log());
        INFO(p.log());
        CHECK(st.str() == "exit code 1");
        REQUIRE(lines.size() == 1);
        CHECK(lines[0] == "iawlb: bind " + listen_arg(sp) + ": Address already in use");
    }
}

// ===========================================================================
// 7. Bad input for every new option
// ===========================================================================

// A client socket bound to `source` (an address of 127.0.0.0/8), connected to
// 127.0.0.1:port; a blocking connect bounded by SO_SNDTIMEO.
Fd connect_from(const std::string& source, uint16_t port) {
    SockAddr from, to;
    if (!make_addr(source, 0, from) || !make_addr(kLo, port, to)) return Fd();
    Fd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    timeval tv{5, 0};
    if (!s || ::setsockopt(s.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) return Fd();
    if (::bind(s.get(), from.ptr(), from.len) != 0 || ::connect(s.get(), to.ptr(), to.len) != 0) return Fd();
    ::fcntl(s.get(), F_SETFL, ::fcntl(s.get(), F_GETFL) | O_NONBLOCK);
    return s;
}

// Whether a client socket can be bound to `source` (all of 127.0.0.0/8 is
// loopback on Linux, but a container may differ).
bool can_bind(const std::string& source) {
    SockAddr a;
    Fd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    return make_addr(source, 0, a) && s && ::bind(s.get(), a.ptr(), a.len) == 0;
}

// What became of one client from `source`: "served" if its bytes came back
// through the echo destination and the half-close was answered, "closed" if the
// balancer closed it without a byte, else what went wrong.
std::string outcome_from(const std::string& source, uint16_t port) {
    Fd c = connect_from(source, port);
    if (!c) return std::string("connect from ") + source + ": " + std::strerror(errno);
    const std::string msg = "from " + source + "\n";
    if (send_all(c.get(), msg, kIo) != Io::Ok) return "closed";  // a reset may come first
    std::string got;
    Io st = recv_exact(c.get(), got, msg.size(), kIo);
    if ((st == Io::Eof || st == Io::Reset) && got.empty()) return "closed";
    if (st != Io::Ok || got != msg) return std::string("recv: ") + io_name(st) + " '" + got + "'";
    ::shutdown(c.get(), SHUT_WR);
    st = wait_closed(c.get(), kIo);
    return st == Io::Eof ? "served" : std::string("after half-close: ") + io_name(st);
}

TEST_CASE("access rules (--allow, --deny): the first match decides, refused clients are closed at once",
          "[integration][ops][acl]") {
    const auto ports = free_ports(2);
    REQUIRE(ports.size() == 2);
    const uint16_t lp = ports[0], sp = ports[1];
    auto echo = Backend::make(Kind::Echo, "E");
    if (!can_bind("127.0.0.3")) {
        WARN("cannot bind a client to 127.0.0.3 here: skipped");
        return;
    }
    const long before = echo->connections();  // 0: each section has its own destination

    SECTION("a deny before a broader allow; a client that matches no rule is refused") {
        auto lb = start_balancer({"-v", "--deny", "127.0.0.3", "--allow", "127.0.0.0/30", "--stats", listen_arg(sp),
                                  listen_arg(lp), echo->address()});
        CHECK(outcome_from("127.0.0.1", lp) == "served");
        CHECK(outcome_from("127.0.0.3", lp) == "closed");  // denied, though inside 127.0.0.0/30
        CHECK(outcome_from("127.0.0.2", lp) == "served");
        CHECK(outcome_from("127.0.0.4", lp) == "closed");  // outside every rule
        auto m = scrape(sp);
        INFO(show_metrics(m) << "\nlog:\n" << lb->log());
        CHECK(value_of(m, "iawlb_denied_connections_total") == 2);
        CHECK(value_of(m, "iawlb_accepted_connections_total") == 2);
        CHECK(echo->connections() - before == 2);  // the destination never saw the others
        CHECK(count_of(lb->log(), " denied by the access rules") == 2);
        CHECK(count_of(lb->log(), "127.0.0.3:") == 1);
    }
    SECTION("only denies: every other client is served, also on a dual-stack listener (IPv4-mapped)") {
        auto lb = start_balancer({"--deny", "127.0.0.2/32", "--stats", listen_arg(sp), std::to_string(lp),
                                  echo->address()});
        CHECK(outcome_from("127.0.0.1", lp) == "served");
        CHECK(outcome_from("127.0.0.2", lp) == "closed");
        CHECK(outcome_from("127.0.0.3", lp) == "served");
        auto m = scrape(sp);
        INFO(show_metrics(m));
        CHECK(value_of(m, "iawlb_denied_connections_total") == 1);
        CHECK(echo->connections() - before == 2);
    }
    SECTION("an allow alone refuses the rest") {
        auto lb = start_balancer({"--allow", "127.0.0.2", "--stats", listen_arg(sp), listen_arg(lp), echo->address()});
        CHECK(outcome_from("127.0.0.1", lp) == "closed");
        CHECK(outcome_from("127.0.0.2", lp) == "served");
        CHECK(value_of(scrape(sp), "iawlb_denied_connections_total") == 1);
    }
}

// The answer of a Name destination to a client from `source`, or "<...>" on error.
std::string fetch_from(const std::string& source, uint16_t port) {
    Fd c = connect_from(source, port);
    if (!c) return std::string("<connect from ") + source + ": " + std::strerror(errno) + ">";
    std::string s;
    Io st = recv_until_eof(c.get(), s, kIo);
    return st == Io::Eof ? s : "<" + std::string(io_name(st)) + " after '" + s + "'>";
}

TEST_CASE("source affinity (-a source): each client address keeps its destination; one that dies moves only its own",
          "[integration][ops][affinity]") {
    auto a = Backend::make(Kind::Name, "A");
    auto b = Backend::make(Kind::Name, "B");
    auto c = Backend::make(Kind::Name, "C");
    if (!can_bind("127.0.0.3")) {
        WARN("cannot bind a client to 127.0.0.3 here: skipped");
        return;
    }
    const uint16_t lp = free_port();
    auto lb = start_balancer({"-a", "source", listen_arg(lp), a->address(), b->address(), c->address()});

    // 24 client addresses, three connections each (each from a new port): always the same answer.
    std::map<std::string, std::string> home;
    std::map<std::string, int> per_dest;
    for (int i = 1; i <= 24; ++i) {
        const std::string src = "127.0.0." + std::to_string(i);
        for (int round = 0; round < 3; ++round) {
            std::string got = fetch_from(src, lp);
            INFO(src << ", round " << round);
            REQUIRE((got == "A\n" || got == "B\n" || got == "C\n"));
            if (round == 0) home[src] = got;
            CHECK(got == home[src]);
        }
        per_dest[home[src]]++;
    }
    INFO("clients per destination: " << show(per_dest));
    CHECK(per_dest.size() >= 2);  // 24 addresses on one destination would be no hash

    // B dies: its clients are served by A and C, every other client stays where it was.
    const std::string gone = per_dest.count("B\n") ? "B\n" : (per_dest.count("A\n") ? "A\n" : "C\n");
    (gone == "B\n" ? b : gone == "A\n" ? a : c)->kill();
    for (auto& [src, dest] : home) {
        std::string got = fetch_from(src, lp);
        INFO(src << " was on " << dest);
        if (dest == gone) {
            CHECK(got != gone);
            CHECK((got == "A\n" || got == "B\n" || got == "C\n"));
        } else {
            CHECK(got == dest);
        }
    }
}

TEST_CASE("slow start (--slow-start): a destination that comes back gets fewer new clients than its peer",
          "[integration][ops][slowstart]") {
    auto a = Backend::make(Kind::Name, "A");
    auto b = Backend::make(Kind::Name, "B");
    const uint16_t lp = free_port();
    // Ten minutes: every fetch below happens inside the slow start, however loaded the machine.
    auto lb = start_balancer({"-v", "-a", "roundrobin", "--slow-start", "10m", "--backoff-max", "250ms", listen_arg(lp),
                              a->address(), b->address()});
    std::map<std::string, int> first = fetch_many(lp, 20);
    INFO("both up from the start: " << show(first));
    CHECK(first["A\n"] == 10);
    CHECK(first["B\n"] == 10);

    b->stop();
    CHECK(wait_until([&] { return fetch(kLo, lp) == "A\n" && lb->log().find(" is down") != std::string::npos; }, kIo));
    REQUIRE(b->start());
    // B is back when a client reaches it (its trial); from then on it is in slow start.
    CHECK(wait_until([&] { return fetch(kLo, lp) == "B\n"; }, kIo, 0.05));
    std::map<std::string, int> later = fetch_many(lp, 40);
    INFO("after B came back: " << show(later) << "\nlog:\n" << lb->log());
    CHECK(later["A\n"] + later["B\n"] == 40);
    CHECK(later["B\n"] <= 2);  // its share is a few thousandths of A's for minutes
}

TEST_CASE("backups (--backup DEST): used only while every primary is down, left when one is back",
          "[integration][ops][backup]") {
    auto a = Backend::make(Kind::Name, "A");
    auto b = Backend::make(Kind::Name, "B");
    const uint16_t lp = free_port();
    auto lb = start_balancer({"--backoff-max", "250ms", "--backup", b->address(), listen_arg(lp), a->address()});
    CHECK(lb->log().find(b->address() + " (backup)") != std::string::npos);
    std::map<std::string, int> up = fetch_many(lp, 10);
    INFO("primary up: " << show(up));
    CHECK(up["A\n"] == 10);

    a->stop();  // every client is served by the backup, the first one after a failed connect to A
    std::map<std::string, int> down = fetch_many(lp, 10);
    INFO("primary down: " << show(down) << "\nlog:\n" << lb->log());
    CHECK(down["B\n"] == 10);

    REQUIRE(a->start());  // within a backoff (250 ms at most) a client tests A, and A has them all again
    CHECK(wait_until([&] { return fetch(kLo, lp) == "A\n"; }, kIo, 0.05));
    std::map<std::string, int> back = fetch_many(lp, 10);
    INFO("primary back: " << show(back));
    CHECK(back["A\n"] == 10);
}

// A client of a per-destination limit: sends its line and keeps its connection open.
static Fd limited_client(uint16_t lp, const std::string& line) {
    Fd c = connect_to(kLo, lp);
    if (c && send_all(c.get(), line, kIo) != Io::Ok) c.reset();
    return c;
}

// Ends an echo client cleanly: half-close, read to the end. The balancer releases the
// destination only after the echo server's own end, so by then the server counts the
// connection as closed (Backend::peak never sees a place that the balancer reused early).
static bool end_client(Fd& c) {
    ::shutdown(c.get(), SHUT_WR);
    std::string rest;
    Io st = recv_until_eof(c.get(), rest, kIo);
    c.reset();
    return st == Io::Eof || st == Io::Ok;
}

// Two echo servers behind a balancer of two workers with --dest-max-conn limit, and a
// queue timeout longer than any test.
struct LimitedPair {
    std::unique_ptr<Backend> a = Backend::make(Kind::Echo, "A");
    std::unique_ptr<Backend> b = Backend::make(Kind::Echo, "B");
    uint16_t lp = free_port();
    Balancer lb;
    explicit LimitedPair(int limit)
        : lb(start_balancer({"-w", "2", "--dest-max-conn", std::to_string(limit), "--queue-timeout", "10m",
                             listen_arg(lp), a->address(), b->address()})) {}
};

TEST_CASE("a limit per destination (--dest-max-conn): a client beyond it waits and is served when a place frees",
          "[integration][ops][dest-limit]") {
    LimitedPair pair(2);
    auto &a = pair.a, &b = pair.b;
    auto &lb = pair.lb;
    const uint16_t lp = pair.lp;
    CHECK(lb->log().find("destinations (at most 2 each)") != std::string::npos);
    std::vector<Fd> held;
    for (int i = 0; i < 4; ++i) {
        const std::string line = "held " + std::to_string(i) + "\n";
        held.push_back(limited_client(lp, line));
        REQUIRE(held.back());
        std::string got;
        REQUIRE(recv_exact(held.back().get(), got, line.size(), kIo) == Io::Ok);
        CHECK(got == line);
    }
    CHECK(a->connections() == 2);
    CHECK(b->connections() == 2);

    // Two more: accepted, queued, and not sent on while both destinations are full.
    Fd w1 = limited_client(lp, "waiter 1\n"), w2 = limited_client(lp, "waiter 2\n");
    REQUIRE(w1);
    REQUIRE(w2);
    sleep_s(1.0);
    std::string early1, early2;
    CHECK(recv_available(w1.get(), early1) == Io::Ok);
    CHECK(recv_available(w2.get(), early2) == Io::Ok);
    CHECK(early1.empty());
    CHECK(early2.empty());
    CHECK(a->connections() + b->connections() == 4);

    // One held client leaves: exactly one waiter gets its place.
    REQUIRE(end_client(held[0]));
    std::string got1, got2;
    const bool one = wait_until([&] {
        recv_available(w1.get(), got1);
        recv_available(w2.get(), got2);
        return !got1.empty() || !got2.empty();
    }, kIo, 0.02);
    CHECK(one);
    sleep_s(0.5);
    recv_available(w1.get(), got1);
    recv_available(w2.get(), got2);
    INFO("waiter 1 got '" << got1 << "', waiter 2 got '" << got2 << "'");
    CHECK((got1.empty() != got2.empty()));
    CHECK(a->connections() + b->connections() == 5);

    // Another leaves: the second waiter is served too.
    REQUIRE(end_client(held[1]));
    CHECK(wait_until([&] {
        recv_available(w1.get(), got1);
        recv_available(w2.get(), got2);
        return got1 == "waiter 1\n" && got2 == "waiter 2\n";
    }, kIo, 0.02));
    CHECK(a->peak() <= 2);
    CHECK(b->peak() <= 2);
    CHECK(end_client(w1));
    CHECK(end_client(w2));
    for (size_t i = 2; i < held.size(); ++i) CHECK(end_client(held[i]));
    CHECK(lb->running());
}

TEST_CASE("a limit per destination under a crowd: 60 clients through 2 x 3 places, all byte-exact, none over",
          "[integration][ops][dest-limit]") {
    LimitedPair pair(3);
    auto &a = pair.a, &b = pair.b;
    auto &lb = pair.lb;
    const uint16_t lp = pair.lp;
    constexpr int N = 60;
    auto msg = [](int i) {
        Pattern p(static_cast<uint64_t>(i) + 1);
        std::string s(16384, '\0');
        p.fill(&s[0], s.size());
        return s;
    };
    Deadline d(kBulk);
    std::vector<Fd> cs;
    for (int i = 0; i < N; ++i) {
        cs.push_back(connect_to(kLo, lp, std::min(kIo, d.left())));
        REQUIRE(cs.back());
        REQUIRE(send_all(cs.back().get(), msg(i), std::min(kIo, d.left())) == Io::Ok);
        ::shutdown(cs.back().get(), SHUT_WR);  // the echo server ends after its answer
    }
    int ok = 0;
    std::string first_error;
    for (int i = 0; i < N; ++i) {
        std::string got;
        Io st = recv_until_eof(cs[i].get(), got, std::min(kBulk, d.left()));
        if (st == Io::Eof && got == msg(i)) ++ok;
        else if (first_error.empty())
            first_error = "client " + std::to_string(i) + ": " + io_name(st) + ", " + std::to_string(got.size()) + " bytes";
    }
    INFO("first error: " << first_error << "\nlog:\n" << lb->log());
    CHECK(ok == N);
    CHECK(a->connections() + b->connections() == N);
    CHECK(a->peak() <= 3);
    CHECK(b->peak() <= 3);
    CHECK(lb->running());
}

TEST_CASE("command line: malformed operations options exit 2 with one line naming the argument",
          "[integration][ops]") {
    const auto ports = free_ports(3);
    REQUIRE(ports.size() == 3);
    const std::string L = listen_arg(ports[0]), D = listen_arg(ports[1]), S = listen_arg(ports[2]);
    struct Case {
        std::vector<std::string> args;
        std::string names;  // what the message must quote
    };
    const std::vector<Case> cases = {
        // weights
        {{L, D + "@0"}, "'" + D + "@0'"},
        {{L, D + "@257"}, "'" + D + "@257'"},
        {{L, D + "@x"}, "'" + D + "@x'"},
        {{L, D + "@"}, "'" + D + "@'"},
        {{L, D + "@-1"}, "'" + D + "@-1'"},
        {{L, D + "@1.5"}, "'" + D + "@1.5'"},
        {{L, D + "@3@3"}, "'" + D + "@3@3'"},
        {{L, D, D + "@99999999999"}, "'" + D + "@99999999999'"},
        {{L + "@2", D}, "'" + L + "@2'"},
        // health checks
        {{"--check-interval", "soon", L, D}, "'soon'"},
        {{"--check-interval", "-1s", L, D}, "'-1s'"},
        {{"--check-interval", "1.5s", L, D}, "'1.5s'"},
        {{"--check-interval=", L, D}, "--check-interval"},
        {{L, D, "--check-interval"}, "'--check-interval' needs a value"},
        {{"--rise", "0", L, D}, "--rise: '0'"},
        {{"--rise", "1001", L, D}, "--rise: '1001'"},
        {{"--rise=two", L, D}, "--rise: 'two'"},
        {{"--fall", "x", L, D}, "--fall: 'x'"},
        {{"--fall", "0", L, D}, "--fall: '0'"},
        // the queue limit
        {{"--queue-max", "-1", L, D}, "--queue-max: '-1'"},
        {{"--queue-max", "abc", L, D}, "--queue-max: 'abc'"},
        {{"--queue-max", "", L, D}, "--queue-max: ''"},
        {{"--queue-max", "1e3", L, D}, "--queue-max: '1e3'"},
        // the statistics address
        {{"--stats", "0", L, D}, "'0'"},
        {{"--stats", "70000", L, D}, "'70000'"},
        {{"--stats", "127.0.0.1:", L, D}, "'127.0.0.1:'"},
        {{"--stats", "::1:9100", L, D}, "'::1:9100'"},
        {{"--stats", "[::1", L, D}, "'[::1'"},
        {{"--stats", "[::1]9100", L, D}, "'[::1]9100'"},
        {{"--stats", "", L, D}, "statistics address ''"},
        {{"--stats", "127.0.0.1:http", L, D}, "'127.0.0.1:http'"},
        {{L, D, "--stats"}, "'--stats' needs a value"},
        // PROXY protocol and --reuseport
        {{"--send-proxy", "--send-proxy-v2", L, D}, "--send-proxy and --send-proxy-v2"},
        {{"--send-proxy-v2", L, D, "--send-proxy"}, "--send-proxy and --send-proxy-v2"},
        {{"--send-proxy=1", L, D}, "'--send-proxy' takes no value"},
        {{"--send-proxy-v2=yes", L, D}, "'--send-proxy-v2' takes no value"},
        {{"--reuseport=1", L, D}, "'--reuseport' takes no value"},
        {{"--send-proxy-v3", L, D}, "unknown option '--send-proxy-v3'"},
        // access rules
        {{"--allow", "127.0.0.1/8", L, D}, "'127.0.0.1/8' has bits set beyond its prefix length"},
        {{"--deny", "10.0.0.0/33", L, D}, "--deny: '10.0.0.0/33'"},
        {{"--allow", "localhost", L, D}, "--allow: 'localhost'"},
        {{L, D, "--deny"}, "'--deny' needs a value"},
        {{"--slow-start", "soon", L, D}, "--slow-start: 'soon'"},
        {{"--backup", "127.0.0.1:", L, D}, "'127.0.0.1:'"},
        {{L, D, "--backup"}, "'--backup' needs a value"},
    };
    int checked = 0;
    for (const Case& k : cases) {
        std::vector<std::string> argv = {iawlb_path()};
        argv.insert(argv.end(), k.args.begin(), k.args.end());
        Process p(argv);
        ExitStatus st = p.wait_exit(kIo);
        const std::string log = p.log();
        const auto lines = split_lines(log);
        INFO("command: " << p.command() << "\n" << st.str() << ", output:\n" << log);
        CHECK(st.str() == "exit code 2");
        CHECK(lines.size() == 1);
        CHECK(!log.empty());
        CHECK(log.back() == '\n');
        CHECK(log.compare(0, 7, "iawlb: ") == 0);
        CHECK(log.find(k.names) != std::string::npos);
        CHECK(log.find("(see iawlb --help)") != std::string::npos);
        CHECK(sanitizer_report(log).empty());
        ++checked;
    }
    CHECK(checked == int(cases.size()));

    SECTION("and the valid forms of the same options start") {
        auto echo = Backend::make(Kind::Echo, "E");
        auto lb = start_balancer({"--check-interval", "0", "--rise=1", "--fall", "1000", "--queue-max", "0", "--stats",
                                  S, "--send-proxy", "--send-proxy", "--reuseport", L, echo->address() + "@256"});
        CHECK(lb->running());
        CHECK(lb->log().find("statistics on http://" + S + "/metrics") != std::string::npos);
        auto m = scrape(ports[2]);
        CHECK(value_of(m, dest_series("iawlb_destination_weight", echo->address())) == 256);
    }
}
