// balancer.hpp - what the integration suites share on top of harness.hpp: the
// balancer process (started, waited for and checked for sanitizer reports), the
// Catch2 listener that makes a Process print its output after a failure, and
// small exchanges through the balancer (echo, fetch, tally).
//
// Include it once per test binary, after <catch2/catch.hpp> with
// CATCH_CONFIG_EXTERNAL_INTERFACES defined: it registers the listener. The
// functions are inline so that a suite may leave some of them unused.
#pragma once

#include "harness.hpp"

#include <cctype>
#include <map>

using namespace harness;

namespace {

// Counts failed assertions, so that a Process knows to print its output.
struct FailureCounter : Catch::TestEventListenerBase {
    using TestEventListenerBase::TestEventListenerBase;
    bool assertionEnded(Catch::AssertionStats const& stats) override {
        if (!stats.assertionResult.isOk()) failure_count().fetch_add(1);
        return true;
    }
};

constexpr double kReady = 15.0;  // balancer start-up ("listening on")
constexpr double kIo = 20.0;     // one small exchange
constexpr double kBulk = 180.0;  // one big transfer (which also fails after kIo without progress)
const std::string kLo = "127.0.0.1";
constexpr size_t MiB = 1024 * 1024;

inline std::string iawlb_path() {
    const char* e = std::getenv("IAWLB");
    return e && *e ? e : "./iawlb";
}

// The balancer process. When it goes, it is killed, and its log must not hold a
// sanitizer report (a sanitizer build may report and carry on).
class Balancer {
public:
    explicit Balancer(std::unique_ptr<Process> p) : p_(std::move(p)) {}
    Balancer(Balancer&&) = default;
    ~Balancer() {
        if (!p_) return;
        p_->kill_now();
        if (std::uncaught_exceptions() == 0) {
            const std::string report = sanitizer_report(p_->log());
            INFO("sanitizer report in the balancer's log:\n" << report);
            CHECK(report.empty());
        }
    }
    Process* operator->() const { return p_.get(); }

private:
    std::unique_ptr<Process> p_;
};

// Starts the balancer with `args` (optionally behind a wrapper such as prlimit) and
// waits until it has logged "listening on".
inline Balancer start_balancer(const std::vector<std::string>& args, const std::vector<std::string>& prefix = {}) {
    const std::string bin = iawlb_path();
    INFO("balancer binary: " << bin << " (set IAWLB to use another one)");
    REQUIRE(::access(bin.c_str(), X_OK) == 0);
    std::vector<std::string> argv(prefix);
    argv.push_back(bin);
    argv.insert(argv.end(), args.begin(), args.end());
    auto p = std::make_unique<Process>(argv);
    INFO("command: " << p->command() << "\nspawn error: " << p->spawn_error());
    REQUIRE(p->started());
    bool ready = p->wait_for_log("listening on", kReady);
    INFO("balancer: " << p->status().str() << "\nlog:\n" << p->log());
    REQUIRE(ready);
    return Balancer(std::move(p));
}

std::string listen_arg(uint16_t port, const std::string& host = kLo) { return host_port(host, port); }

inline std::string lower(std::string s) {
    for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return s;
}

// One echo round trip on an open connection: "" if fine, else what went wrong.
inline std::string echo_on(int fd, const std::string& msg, double timeout = kIo) {
    Io st = send_all(fd, msg, timeout);
    if (st != Io::Ok) return std::string("send: ") + io_name(st);
    std::string got;
    st = recv_exact(fd, got, msg.size(), timeout);
    if (st != Io::Ok) return std::string("recv: ") + io_name(st) + " after " + std::to_string(got.size()) + " bytes";
    if (got != msg) return "got '" + got + "' instead of '" + msg + "'";
    return "";
}

// Connect, one echo round trip, half-close, then EOF from the other side.
inline std::string echo_check(const std::string& host, uint16_t port, const std::string& msg, double timeout = kIo) {
    int e = 0;
    Fd c = connect_to(host, port, timeout, &e);
    if (!c) return std::string("connect: ") + std::strerror(e);
    std::string r = echo_on(c.get(), msg, timeout);
    if (!r.empty()) return r;
    ::shutdown(c.get(), SHUT_WR);
    Io st = wait_closed(c.get(), timeout);
    if (st != Io::Eof) return std::string("after half-close: ") + io_name(st) + " instead of EOF";
    return "";
}

// Connects and reads everything up to EOF (the answer of a Name backend). Errors come
// back as "<...>".
inline std::string fetch(const std::string& host, uint16_t port, double timeout = kIo) {
    int e = 0;
    Fd c = connect_to(host, port, timeout, &e);
    if (!c) return std::string("<connect: ") + std::strerror(e) + ">";
    std::string s;
    Io st = recv_until_eof(c.get(), s, timeout);
    if (st != Io::Eof) return "<" + std::string(io_name(st)) + " after '" + s + "'>";
    return s;
}

// `n` sequential fetches, tallied by answer; stops after 3 errors (each may take kIo).
inline std::map<std::string, int> fetch_many(uint16_t port, int n) {
    std::map<std::string, int> counts;
    for (int i = 0, errors = 0; i < n && errors < 3; ++i) {
        std::string s = fetch(kLo, port);
        counts[s]++;
        if (s.empty() || s.front() == '<') ++errors;
    }
    return counts;
}

// The lines of a log that contain every one of the needles.
inline int count_lines(const std::string& log, const std::vector<std::string>& needles) {
    int n = 0;
    for (const std::string& line : split_lines(log)) {
        bool all = true;
        for (const std::string& w : needles) all = all && line.find(w) != std::string::npos;
        n += all ? 1 : 0;
    }
    return n;
}

inline std::string show(const std::map<std::string, int>& m) {
    std::string s;
    for (auto& [k, v] : m) {
        std::string key = k;
        if (!key.empty() && key.back() == '\n') key.pop_back();
        s += key + "=" + std::to_string(v) + " ";
    }
    return s;
}

// Connection attempts until one is refused (the balancer closed its listening socket).
// Returns the seconds it took, or -1 if it never happened within `timeout`.
inline double wait_refused(const std::string& host, uint16_t port, double timeout) {
    double t0 = now();
    Deadline d(timeout);
    while (!d.expired()) {
        int e = 0;
        Fd probe = connect_once(host, port, std::min(1.0, std::max(0.05, d.left())), &e);
        if (!probe && e == ECONNREFUSED) return now() - t0;
        probe.reset();
        sleep_s(std::min(0.05, d.left()));
    }
    return -1;
}

// A port free on both 127.0.0.1 and ::1.
inline uint16_t free_port_both() {
    for (int i = 0; i < 50; ++i) {
        uint16_t p = free_port("::1");
        SockAddr a;
        make_addr(kLo, p, a);
        Fd s = tcp_socket(AF_INET);
        if (p && s && ::bind(s.get(), a.ptr(), a.len) == 0) return p;
    }
    return 0;
}

inline std::string resp(const std::vector<std::string>& words) {
    std::string s = "*" + std::to_string(words.size()) + "\r\n";
    for (auto& w : words) s += "$" + std::to_string(w.size()) + "\r\n" + w + "\r\n";
    return s;
}

// A destination that never answers a connect: a listener with a full accept
// queue (backlog 0, one connection that is never accepted), to which the
// kernel drops every further SYN. Both sockets are returned, to be held for
// the test; empty if this kernel answers anyway (then the caller skips).
struct Blackhole {
    Fd listener, filler;
    uint16_t port = 0;
    explicit operator bool() const { return port != 0; }
};
inline Blackhole blackhole_destination() {
    Blackhole b;
    b.listener = listen_socket(kLo, 0, true, /*backlog=*/0);
    if (!b.listener) return b;
    const uint16_t p = local_port(b.listener.get());
    b.filler = connect_to(kLo, p, 5.0);
    int e = 0;
    if (!b.filler || connect_once(kLo, p, 0.5, &e) || e != ETIMEDOUT) return b;
    b.port = p;
    return b;
}

// Printable form of bytes: \r, \n and non-printable bytes escaped.
inline std::string printable(const std::string& s) {
    std::string out;
    char b[8];
    for (unsigned char ch : s) {
        if (ch == '\r') out += "\\r";
        else if (ch == '\n') out += "\\n";
        else if (ch == '\\') out += "\\\\";
        else if (ch >= 0x20 && ch < 0x7f) out += static_cast<char>(ch);
        else {
            std::snprintf(b, sizeof b, "\\x%02x", ch);
            out += b;
        }
    }
    return out;
}

// ---------------------------------------------------------------------------
// A tiny HTTP/1.0 client for the statistics server
// ---------------------------------------------------------------------------

struct HttpReply {
    std::string error;  // empty when a complete response arrived and the server closed
    int status = 0;
    std::string raw, head, body;
    std::string header(const std::string& name) const {  // value of a header, "" if absent
        for (const std::string& line : split_lines(head)) {
            size_t colon = line.find(':');
            if (colon == std::string::npos || lower(line.substr(0, colon)) != lower(name)) continue;
            std::string v = line.substr(colon + 1);
            while (!v.empty() && (v.front() == ' ')) v.erase(v.begin());
            while (!v.empty() && (v.back() == '\r' || v.back() == ' ')) v.pop_back();
            return v;
        }
        return "";
    }
};

// Sends `request` as it is, reads the response up to the server's close, splits it.
inline HttpReply http_raw(uint16_t port, const std::string& request, double timeout = kIo) {
    HttpReply r;
    int e = 0;
    Fd c = connect_to(kLo, port, timeout, &e);
    if (!c) {
        r.error = std::string("connect: ") + std::strerror(e);
        return r;
    }
    Io st = send_all(c.get(), request, timeout);
    if (st != Io::Ok) {
        r.error = std::string("send: ") + io_name(st);
        return r;
    }
    st = recv_until_eof(c.get(), r.raw, timeout);
    if (st != Io::Eof) r.error = std::string("recv: ") + io_name(st) + " after " + std::to_string(r.raw.size()) + " bytes";
    size_t end = r.raw.find("\r\n\r\n");
    if (end == std::string::npos) {
        if (r.error.empty()) r.error = "no end of header in '" + printable(r.raw) + "'";
        return r;
    }
    r.head = r.raw.substr(0, end + 2);
    r.body = r.raw.substr(end + 4);
    if (r.head.compare(0, 9, "HTTP/1.1 ") == 0 || r.head.compare(0, 9, "HTTP/1.0 ") == 0)
        r.status = std::atoi(r.head.c_str() + 9);
    else if (r.error.empty())
        r.error = "not an HTTP status line: '" + printable(r.head.substr(0, 40)) + "'";
    std::string len = r.header("Content-Length");
    if (r.error.empty() && (len.empty() || std::to_string(r.body.size()) != len))
        r.error = "Content-Length '" + len + "' but a body of " + std::to_string(r.body.size()) + " bytes";
    return r;
}

inline HttpReply http_get(uint16_t port, const std::string& path, double timeout = kIo) {
    return http_raw(port, "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", timeout);
}

}  // namespace

CATCH_REGISTER_LISTENER(FailureCounter)
