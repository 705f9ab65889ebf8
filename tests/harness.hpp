// harness.hpp - helpers for the iawlb integration tests (header-only, C++17, Linux).
//
// Everything here is bounded in time and cleans up after itself (RAII):
//   Fd            owns a file descriptor.
//   Deadline      a point in time; every wait in this file takes one (or seconds).
//   free_port()   a TCP port below the ephemeral range, free right now on 127.0.0.1 or ::1.
//   connect_to()  a connected, non-blocking client socket (bounded retries).
//   send_all / recv_exact / recv_until_eof / wait_closed / recv_verify: poll-based I/O.
//   Pattern       a deterministic byte stream (xorshift64), to check byte-exactness.
//   Process       runs a command with its output in a temp file; SIGKILLs and reaps it
//                 in its destructor, and prints its output if a test assertion failed.
//   proc_*()      fd count, threads, VmRSS and CPU time of a process (or of one of
//                 its threads, found by name), from /proc.
//   Backend       a small TCP server run by a thread of the test process (echo, name,
//                 greeter, upload-then-answer, source); can be killed and restarted.
//
// Threads: nothing in here uses Catch2, so it may run on any thread; Catch2 assertions
// must stay on the main thread. Processes must be started from the main thread (their
// death signal is tied to the thread that starts them).
#pragma once

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

extern char** environ;

namespace harness {

// ---------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------

inline double now() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

inline void sleep_s(double seconds) {
    if (seconds > 0) std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

class Deadline {
public:
    explicit Deadline(double seconds) : end_(now() + seconds) {}
    double left() const { return std::max(0.0, end_ - now()); }
    bool expired() const { return left() <= 0.0; }
    // Milliseconds left for poll(), rounded up so that we never spin with a 0 timeout.
    int poll_ms() const {
        double l = left();
        return l <= 0.0 ? 0 : static_cast<int>(l * 1000.0) + 1;
    }

private:
    double end_;
};

// Polls `pred` every `step` seconds until it is true or `timeout` seconds have passed.
inline bool wait_until(const std::function<bool()>& pred, double timeout, double step = 0.02) {
    Deadline d(timeout);
    for (;;) {
        if (pred()) return true;
        if (d.expired()) return false;
        sleep_s(std::min(step, d.left()));
    }
}

// Counted by the test file's Catch2 listener: one per failed assertion. A Process that
// sees it change during its lifetime prints its output when it is destroyed.
inline std::atomic<long>& failure_count() {
    static std::atomic<long> n{0};
    return n;
}

// ---------------------------------------------------------------------------
// File descriptors and addresses
// ---------------------------------------------------------------------------

class Fd {
public:
    Fd() = default;
    explicit Fd(int fd) : fd_(fd) {}
    Fd(Fd&& o) noexcept : fd_(o.release()) {}
    Fd& operator=(Fd&& o) noexcept {
        if (this != &o) reset(o.release());
        return *this;
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() { reset(); }

    int get() const { return fd_; }
    explicit operator bool() const { return fd_ >= 0; }
    int release() {
        int f = fd_;
        fd_ = -1;
        return f;
    }
    void reset(int fd = -1) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = fd;
    }
    // Close with SO_LINGER 0: the peer gets a RST instead of a FIN.
    void abort() {
        if (fd_ < 0) return;
        linger lg{1, 0};
        ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        reset();
    }

private:
    int fd_ = -1;
};

struct SockAddr {
    sockaddr_storage ss{};
    socklen_t len = 0;
    int family() const { return ss.ss_family; }
    const sockaddr* ptr() const { return reinterpret_cast<const sockaddr*>(&ss); }
};

// Numeric hosts only ("127.0.0.1", "::1", "[::1]"): tests never need DNS.
inline bool make_addr(std::string host, uint16_t port, SockAddr& out) {
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
    out = SockAddr{};
    auto* v4 = reinterpret_cast<sockaddr_in*>(&out.ss);
    if (::inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        out.len = sizeof(sockaddr_in);
        return true;
    }
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&out.ss);
    if (::inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        out.len = sizeof(sockaddr_in6);
        return true;
    }
    return false;
}

// "127.0.0.1:80" or "[::1]:80", the form iawlb takes on its command line.
inline std::string host_port(const std::string& host, uint16_t port) {
    if (host.find(':') != std::string::npos && host.front() != '[')
        return "[" + host + "]:" + std::to_string(port);
    return host + ":" + std::to_string(port);
}

inline uint16_t local_port(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
    if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
    return 0;
}

inline Fd tcp_socket(int family) {
    return Fd(::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
}

// A listening socket on host:port (port 0: any). IPv6 sockets are v6-only.
inline Fd listen_socket(const std::string& host, uint16_t port, bool reuse_addr = true,
                        int backlog = 1024, int* err = nullptr) {
    SockAddr a;
    if (!make_addr(host, port, a)) {
        if (err) *err = EINVAL;
        return Fd();
    }
    Fd s = tcp_socket(a.family());
    int one = 1;
    if (s && reuse_addr) ::setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (s && a.family() == AF_INET6)
        ::setsockopt(s.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (!s || ::bind(s.get(), a.ptr(), a.len) != 0 || ::listen(s.get(), backlog) != 0) {
        if (err) *err = errno;
        return Fd();
    }
    return s;
}

// Ports for a test to hand to a process it starts (a balancer's LISTEN_ON, a
// destination that must stay dead) come from below the kernel's ephemeral range,
// never from bind(port 0). A port in that range is free only until the next
// connect() or bind(0) anywhere on the machine: a backend that starts listening, or
// a worker that connects, can take it before the balancer binds it, and the
// balancer then exits with "Address already in use" (seen once in seventy loaded
// runs of the gate). Below the range, nothing but a test takes a port by chance.
// Each call moves on to the next candidate, starting from an offset given by the
// process id, so that two suites, or two calls, do not pick the same one.
inline std::pair<uint16_t, uint16_t> test_port_range() {
    unsigned low = 32768;
    if (FILE* f = std::fopen("/proc/sys/net/ipv4/ip_local_port_range", "r")) {
        unsigned lo = 0, hi = 0;
        if (std::fscanf(f, "%u %u", &lo, &hi) == 2 && lo > 12000) low = lo;
        std::fclose(f);
    }
    return {static_cast<uint16_t>(low - 10000), static_cast<uint16_t>(low)};  // [first, end)
}

// A port below the ephemeral range that nothing holds right now: bound without
// SO_REUSEADDR, so that a port with a connection in TIME_WAIT is passed over too.
// Returns 0 if none of the first thousand candidates is free.
inline uint16_t free_port(const std::string& host = "127.0.0.1") {
    static std::atomic<unsigned> next{static_cast<unsigned>(::getpid()) * 7919u};
    const auto range = test_port_range();
    const unsigned span = range.second - range.first;
    for (int tries = 0; tries < 1000; ++tries) {
        const uint16_t port = static_cast<uint16_t>(range.first + next.fetch_add(1) % span);
        SockAddr a;
        if (!make_addr(host, port, a)) return 0;
        Fd s = tcp_socket(a.family());
        if (!s) return 0;
        if (::bind(s.get(), a.ptr(), a.len) == 0) return port;
        if (errno != EADDRINUSE && errno != EACCES) return 0;
    }
    return 0;
}

// n distinct free ports (consecutive calls of free_port never repeat a port until
// the range wraps, ten thousand calls later).
inline std::vector<uint16_t> free_ports(size_t n, const std::string& host = "127.0.0.1") {
    std::vector<uint16_t> ports;
    for (size_t i = 0; i < n; ++i) {
        uint16_t p = free_port(host);
        if (p == 0) return {};
        ports.push_back(p);
    }
    return ports;
}

inline bool ipv6_loopback_available() { return free_port("::1") != 0; }

// One connection attempt. On failure returns an empty Fd and sets *err (ETIMEDOUT when
// `timeout` ran out). The socket is non-blocking, close-on-exec, TCP_NODELAY.
inline Fd connect_once(const std::string& host, uint16_t port, double timeout, int* err = nullptr) {
    int dummy = 0;
    int& e = err ? *err : dummy;
    SockAddr a;
    if (!make_addr(host, port, a)) {
        e = EINVAL;
        return Fd();
    }
    Fd s = tcp_socket(a.family());
    if (!s) {
        e = errno;
        return Fd();
    }
    int one = 1;
    ::setsockopt(s.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (::connect(s.get(), a.ptr(), a.len) == 0) return s;
    if (errno != EINPROGRESS) {
        e = errno;
        return Fd();
    }
    Deadline d(timeout);
    pollfd p{s.get(), POLLOUT, 0};
    for (;;) {
        int r = ::poll(&p, 1, d.poll_ms());
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            e = r == 0 ? ETIMEDOUT : errno;
            return Fd();
        }
        break;
    }
    int soerr = 0;
    socklen_t len = sizeof soerr;
    ::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &soerr, &len);
    if (soerr != 0) {
        e = soerr;
        return Fd();
    }
    return s;
}

// Connects, retrying (refused, timed out, ...) until `timeout` seconds have passed.
inline Fd connect_to(const std::string& host, uint16_t port, double timeout = 10.0, int* err = nullptr) {
    Deadline d(timeout);
    int e = 0;
    for (;;) {
        Fd s = connect_once(host, port, std::min(3.0, std::max(0.05, d.left())), &e);
        if (s || d.expired()) {
            if (err) *err = e;
            return s;
        }
        sleep_s(std::min(0.05, d.left()));
    }
}

inline bool raise_nofile_limit() {
    rlimit rl{};
    if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return false;
    rl.rlim_cur = rl.rlim_max;
    return ::setrlimit(RLIMIT_NOFILE, &rl) == 0;
}

// ---------------------------------------------------------------------------
// Poll-based, bounded I/O on non-blocking sockets
// ---------------------------------------------------------------------------

enum class Io { Ok, Eof, Reset, Timeout, Error };

inline const char* io_name(Io s) {
    switch (s) {
        case Io::Ok: return "ok";
        case Io::Eof: return "EOF";
        case Io::Reset: return "reset";
        case Io::Timeout: return "timeout";
        case Io::Error: return "error";
    }
    return "?";
}

inline std::ostream& operator<<(std::ostream& os, Io s) { return os << io_name(s); }

inline Io io_from_errno(int e) {
    switch (e) {
        case ECONNRESET:
        case EPIPE:
        case ECONNABORTED:
        case ECONNREFUSED: return Io::Reset;
        default: return Io::Error;
    }
}

// Waits until fd is ready for `events`. Returns false on timeout.
inline bool wait_ready(int fd, short events, const Deadline& d) {
    pollfd p{fd, events, 0};
    for (;;) {
        int r = ::poll(&p, 1, d.poll_ms());
        if (r < 0 && errno == EINTR) continue;
        return r > 0;  // errors and hang-ups count as "ready": the next call reports them
    }
}

inline Io send_all(int fd, const void* data, size_t n, double timeout, size_t* sent = nullptr) {
    Deadline d(timeout);
    const char* p = static_cast<const char*>(data);
    size_t done = 0;
    Io st = Io::Ok;
    while (done < n) {
        ssize_t k = ::send(fd, p + done, n - done, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k > 0) {
            done += static_cast<size_t>(k);
            continue;
        }
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!wait_ready(fd, POLLOUT, d)) {
                st = Io::Timeout;
                break;
            }
            continue;
        }
        st = io_from_errno(errno);
        break;
    }
    if (sent) *sent = done;
    return st;
}

inline Io send_all(int fd, const std::string& s, double timeout) {
    return send_all(fd, s.data(), s.size(), timeout);
}

// One recv: >0 bytes -> Ok, 0 -> Eof; Timeout when nothing came before the deadline.
inline Io recv_some(int fd, void* buf, size_t cap, const Deadline& d, size_t* got) {
    *got = 0;
    for (;;) {
        ssize_t k = ::recv(fd, buf, cap, MSG_DONTWAIT);
        if (k > 0) {
            *got = static_cast<size_t>(k);
            return Io::Ok;
        }
        if (k == 0) return Io::Eof;
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return io_from_errno(errno);
        if (!wait_ready(fd, POLLIN, d)) return Io::Timeout;
    }
}

// Reads exactly n bytes (Ok), or fewer and why (Eof, Reset, Timeout, Error).
inline Io recv_exact(int fd, void* buf, size_t n, double timeout, size_t* got = nullptr) {
    Deadline d(timeout);
    char* p = static_cast<char*>(buf);
    size_t done = 0;
    Io st = Io::Ok;
    while (done < n) {
        size_t k = 0;
        st = recv_some(fd, p + done, n - done, d, &k);
        if (st != Io::Ok) break;
        done += k;
    }
    if (got) *got = done;
    return done == n ? Io::Ok : st;
}

inline Io recv_exact(int fd, std::string& out, size_t n, double timeout) {
    out.assign(n, '\0');
    size_t got = 0;
    Io st = recv_exact(fd, &out[0], n, timeout, &got);
    out.resize(got);
    return st;
}

// Appends everything up to EOF to `out`. Eof means success; more than max_bytes is Error.
inline Io recv_until_eof(int fd, std::string& out, double timeout, size_t max_bytes = 64u << 20) {
    Deadline d(timeout);
    char buf[65536];
    for (;;) {
        size_t k = 0;
        Io st = recv_some(fd, buf, sizeof buf, d, &k);
        if (st != Io::Ok) return st;
        out.append(buf, k);
        if (out.size() > max_bytes) return Io::Error;
    }
}

// Reads and discards until the peer closes: returns Eof or Reset, or Timeout.
inline Io wait_closed(int fd, double timeout, size_t* discarded = nullptr) {
    Deadline d(timeout);
    char buf[65536];
    size_t total = 0;
    Io st;
    for (;;) {
        size_t k = 0;
        st = recv_some(fd, buf, sizeof buf, d, &k);
        if (st != Io::Ok) break;
        total += k;
    }
    if (discarded) *discarded = total;
    return st;
}

// Everything readable right now, without waiting. Returns Ok (maybe nothing), Eof, Reset...
inline Io recv_available(int fd, std::string& out) {
    char buf[65536];
    for (;;) {
        ssize_t k = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (k > 0) {
            out.append(buf, static_cast<size_t>(k));
            continue;
        }
        if (k == 0) return Io::Eof;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return Io::Ok;
        return io_from_errno(errno);
    }
}

// ---------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------

// A byte stream from xorshift64: the same seed always gives the same bytes.
class Pattern {
public:
    explicit Pattern(uint64_t seed) : s_(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {
        if (s_ == 0) s_ = 1;
    }

    void fill(void* dst, size_t n) {
        auto* p = static_cast<unsigned char*>(dst);
        while (n > 0 && left_ > 0) take_byte(p, n);
        while (n >= 8) {
            uint64_t w = next();
            std::memcpy(p, &w, 8);
            p += 8;
            n -= 8;
        }
        while (n > 0) take_byte(p, n);
    }

    std::string bytes(size_t n) {
        std::string s(n, '\0');
        if (n) fill(&s[0], n);
        return s;
    }

private:
    uint64_t next() {
        s_ ^= s_ << 13;
        s_ ^= s_ >> 7;
        s_ ^= s_ << 17;
        return s_;
    }
    void take_byte(unsigned char*& p, size_t& n) {
        if (left_ == 0) {
            word_ = next();
            left_ = 8;
        }
        *p++ = static_cast<unsigned char>(word_);
        word_ >>= 8;
        --left_;
        --n;
    }

    uint64_t s_;
    uint64_t word_ = 0;
    int left_ = 0;
};

// FNV-1a, 64 bit: the checksum the upload backend answers with.
struct Fnv1a {
    uint64_t h = 0xcbf29ce484222325ull;
    void update(const void* data, size_t n) {
        auto* p = static_cast<const unsigned char*>(data);
        for (size_t i = 0; i < n; ++i) {
            h ^= p[i];
            h *= 0x100000001b3ull;
        }
    }
    std::string hex() const {
        char buf[17];
        std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
        return buf;
    }
};

struct VerifyResult {
    Io status = Io::Error;   // Eof when the stream ended cleanly
    uint64_t bytes = 0;      // bytes received
    int64_t mismatch_at = -1;  // first byte that differs from the pattern, -1 if none
    std::string str() const {
        std::ostringstream os;
        os << "status=" << io_name(status) << " bytes=" << bytes << " mismatch_at=" << mismatch_at;
        return os.str();
    }
};

// Reads until EOF (or error, or timeout), checking every byte against `pat`. Reading
// stops early on the first mismatch or when more than max_bytes arrive. Timeout when
// nothing arrives for `idle_timeout` seconds, or the whole takes over `total_timeout`.
inline VerifyResult recv_verify(int fd, Pattern pat, uint64_t max_bytes, double idle_timeout, double total_timeout) {
    VerifyResult r;
    Deadline total(total_timeout);
    std::vector<char> buf(256 * 1024), want(256 * 1024);
    for (;;) {
        size_t k = 0;
        Io st = recv_some(fd, buf.data(), buf.size(), Deadline(std::min(idle_timeout, total.left())), &k);
        if (st != Io::Ok) {
            r.status = st;
            return r;
        }
        pat.fill(want.data(), k);
        if (std::memcmp(buf.data(), want.data(), k) != 0) {
            size_t i = 0;
            while (buf[i] == want[i]) ++i;
            r.mismatch_at = static_cast<int64_t>(r.bytes + i);
            r.bytes += k;
            r.status = Io::Error;
            return r;
        }
        r.bytes += k;
        if (r.bytes > max_bytes) {
            r.mismatch_at = static_cast<int64_t>(max_bytes);
            r.status = Io::Error;
            return r;
        }
    }
}

// ---------------------------------------------------------------------------
// Files and commands
// ---------------------------------------------------------------------------

inline std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

inline bool write_file(const std::string& path, const std::string& data) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << data;
    return static_cast<bool>(f);
}

inline std::string find_in_path(const std::string& name) {
    if (name.find('/') != std::string::npos) return ::access(name.c_str(), X_OK) == 0 ? name : "";
    const char* path = std::getenv("PATH");
    std::stringstream ss(path ? path : "/usr/bin:/bin");
    std::string dir;
    while (std::getline(ss, dir, ':')) {
        std::string p = (dir.empty() ? "." : dir) + "/" + name;
        struct stat st{};
        if (::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(p.c_str(), X_OK) == 0) return p;
    }
    return "";
}

inline std::vector<std::string> split_lines(const std::string& s) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    std::string line;
    while (std::getline(ss, line))
        if (!line.empty()) out.push_back(line);
    return out;
}

// The first sanitizer report in a process's output (with the lines after it), or "".
// UBSan and ThreadSanitizer go on after a report, so a test has to look for them.
inline std::string sanitizer_report(const std::string& log, size_t max_lines = 30) {
    static const char* const marks[] = {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "WARNING: ThreadSanitizer",
                                        "ERROR: ThreadSanitizer", "runtime error:", "ERROR: UndefinedBehaviorSanitizer"};
    size_t at = std::string::npos;
    for (const char* m : marks) at = std::min(at, log.find(m));
    if (at == std::string::npos) return "";
    at = log.rfind('\n', at);
    at = at == std::string::npos ? 0 : at + 1;
    size_t end = at;
    for (size_t i = 0; i < max_lines && end != std::string::npos; ++i) end = log.find('\n', end + 1);
    return log.substr(at, end == std::string::npos ? std::string::npos : end - at);
}

// A temporary directory, removed with its contents on destruction.
class TempDir {
public:
    TempDir() {
        char tmpl[] = "/tmp/iawlb-test-XXXXXX";
        if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp failed");
        path_ = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::string& path() const { return path_; }
    std::string file(const std::string& name) const { return path_ + "/" + name; }

private:
    std::string path_;
};

struct ExitStatus {
    bool finished = false;  // the process was reaped
    bool exited = false;    // ... by exit(code)
    int code = -1;
    bool signaled = false;  // ... by a signal
    int signal = 0;

    bool ok() const { return exited && code == 0; }
    std::string str() const {
        if (!finished) return "still running";
        if (exited) return "exit code " + std::to_string(code);
        if (signaled) return std::string("killed by signal ") + std::to_string(signal) + " (" + strsignal(signal) + ")";
        return "unknown status";
    }
};

inline std::ostream& operator<<(std::ostream& os, const ExitStatus& s) { return os << s.str(); }

// A child process: stdin from /dev/null, stdout and stderr to a temp file (or stdout to
// a file of its own with separate_stdout). It gets SIGKILL if the test process dies
// (setpriv --pdeathsig), and is SIGKILLed and reaped when the Process is destroyed.
class Process {
public:
    explicit Process(std::vector<std::string> argv, bool separate_stdout = false)
        : argv_(std::move(argv)), failures_at_start_(failure_count().load()) {
        if (argv_.empty()) throw std::invalid_argument("Process: empty argv");
        Fd err(make_temp(err_path_));
        Fd out;
        if (separate_stdout) out = Fd(make_temp(out_path_));
        if (!err || (separate_stdout && !out)) {
            spawn_error_ = "cannot create a temp file";
            return;
        }
        std::vector<std::string> full;
        static const std::string setpriv = find_in_path("setpriv");
        if (!setpriv.empty()) full = {setpriv, "--pdeathsig", "KILL", "--"};
        full.insert(full.end(), argv_.begin(), argv_.end());
        std::vector<char*> cargv;
        for (auto& s : full) cargv.push_back(const_cast<char*>(s.c_str()));
        cargv.push_back(nullptr);

        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_adddup2(&fa, out ? out.get() : err.get(), 1);
        posix_spawn_file_actions_adddup2(&fa, err.get(), 2);
        posix_spawnattr_t attr;
        posix_spawnattr_init(&attr);
        sigset_t defaults, mask;
        sigemptyset(&defaults);
        for (int sig = 1; sig < 32; ++sig)
            if (sig != SIGKILL && sig != SIGSTOP) sigaddset(&defaults, sig);
        sigemptyset(&mask);
        posix_spawnattr_setsigdefault(&attr, &defaults);  // e.g. SIGPIPE not inherited as ignored
        posix_spawnattr_setsigmask(&attr, &mask);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
        int rc = ::posix_spawnp(&pid_, cargv[0], &fa, &attr, cargv.data(), environ);
        posix_spawnattr_destroy(&attr);
        posix_spawn_file_actions_destroy(&fa);
        if (rc != 0) {
            pid_ = -1;
            spawn_error_ = std::string("posix_spawn: ") + std::strerror(rc);
        }
    }

    ~Process() {
        kill_now();
        if (failure_count().load() != failures_at_start_) {
            dump(std::cerr);
            std::cerr << "(kept " << err_path_ << (out_path_.empty() ? "" : " and " + out_path_) << ")\n";
        } else {
            ::unlink(err_path_.c_str());
            if (!out_path_.empty()) ::unlink(out_path_.c_str());
        }
    }

    Process(const Process&) = delete;
    Process& operator=(const Process&) = delete;

    bool started() const { return pid_ > 0; }
    const std::string& spawn_error() const { return spawn_error_; }
    pid_t pid() const { return pid_; }

    std::string command() const {
        std::string s;
        for (auto& a : argv_) {
            if (!s.empty()) s += ' ';
            s += a.empty() || a.find(' ') != std::string::npos ? "'" + a + "'" : a;
        }
        return s;
    }

    // stderr (and stdout, unless separate_stdout) so far.
    std::string log() const { return read_file(err_path_); }
    // stdout when separate_stdout, else the same as log().
    std::string out() const { return out_path_.empty() ? log() : read_file(out_path_); }

    // Waits until the output contains `needle`. False on timeout or if the process ended
    // without printing it.
    bool wait_for_log(const std::string& needle, double timeout) {
        Deadline d(timeout);
        for (;;) {
            bool alive = running();
            if (log().find(needle) != std::string::npos) return true;
            if (!alive || d.expired()) return false;
            sleep_s(std::min(0.02, d.left()));
        }
    }

    bool send_signal(int sig) {
        if (!started() || status_.finished) return false;
        return ::kill(pid_, sig) == 0;
    }

    bool running() { return started() && !reap(WNOHANG); }

    // Waits for the process to end; status().finished is false if it did not in time.
    ExitStatus wait_exit(double timeout) {
        if (!started()) return status_;
        Deadline d(timeout);
        while (!reap(WNOHANG) && !d.expired()) sleep_s(std::min(0.005, d.left()));
        return status_;
    }

    const ExitStatus& status() const { return status_; }

    void kill_now() {
        if (!started() || status_.finished) return;
        ::kill(pid_, SIGKILL);
        reap(0);
    }

    void dump(std::ostream& os, size_t tail = 16000) const {
        auto tail_of = [tail](std::string s) {
            return s.size() > tail ? "[...]\n" + s.substr(s.size() - tail) : s;
        };
        os << "===== output of: " << command() << " (pid " << pid_ << ", " << status_.str() << ") =====\n";
        if (!spawn_error_.empty()) os << "spawn error: " << spawn_error_ << "\n";
        os << tail_of(log());
        if (!out_path_.empty()) os << "----- stdout -----\n" << tail_of(out());
        os << "\n===== end of output (pid " << pid_ << ") =====\n";
    }

private:
    static int make_temp(std::string& path) {
        char tmpl[] = "/tmp/iawlb-test-XXXXXX.log";
        int fd = ::mkostemps(tmpl, 4, O_CLOEXEC);
        if (fd >= 0) path = tmpl;
        return fd;
    }

    bool reap(int flags) {
        if (status_.finished) return true;
        int st = 0;
        pid_t r;
        do r = ::waitpid(pid_, &st, flags);
        while (r < 0 && errno == EINTR);
        if (r == pid_) {
            status_.finished = true;
            status_.exited = WIFEXITED(st);
            status_.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
            status_.signaled = WIFSIGNALED(st);
            status_.signal = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
            return true;
        }
        if (r < 0 && errno == ECHILD) {  // not ours any more: nothing to wait for
            status_.finished = true;
            return true;
        }
        return false;
    }

    std::vector<std::string> argv_;
    long failures_at_start_;
    std::string err_path_, out_path_, spawn_error_;
    pid_t pid_ = -1;
    ExitStatus status_;
};

// ---------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------

inline int proc_fd_count(pid_t pid) {
    std::string path = "/proc/" + std::to_string(pid) + "/fd";
    DIR* d = ::opendir(path.c_str());
    if (!d) return -1;
    int n = 0;
    while (dirent* e = ::readdir(d))
        if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) ++n;
    ::closedir(d);
    return n;
}

// A numeric field of /proc/PID/status ("Threads", "VmRSS" in kB, ...); -1 if absent.
inline long proc_status_field(pid_t pid, const std::string& key) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(f, line))
        if (line.compare(0, key.size() + 1, key + ":") == 0) return std::strtol(line.c_str() + key.size() + 1, nullptr, 10);
    return -1;
}

inline long proc_threads(pid_t pid) { return proc_status_field(pid, "Threads"); }
inline long proc_rss_kb(pid_t pid) { return proc_status_field(pid, "VmRSS"); }

// User + system CPU seconds in a /proc stat file (a process's or a thread's); -1 on error.
inline double stat_cpu_seconds(const std::string& path) {
    std::string s = read_file(path);
    size_t paren = s.rfind(')');
    if (paren == std::string::npos) return -1;
    std::istringstream ss(s.substr(paren + 1));
    std::string field;
    unsigned long long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && (ss >> field); ++i) {  // field 3 is the state
        if (i == 14) utime = std::strtoull(field.c_str(), nullptr, 10);
        if (i == 15) stime = std::strtoull(field.c_str(), nullptr, 10);
    }
    return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// User + system CPU seconds used so far by all threads of the process; -1 on error.
inline double proc_cpu_seconds(pid_t pid) { return stat_cpu_seconds("/proc/" + std::to_string(pid) + "/stat"); }

// The id of the thread of `pid` whose name (comm) is `name`; -1 if there is none.
inline pid_t proc_thread_named(pid_t pid, const std::string& name) {
    const std::string dir = "/proc/" + std::to_string(pid) + "/task";
    DIR* d = ::opendir(dir.c_str());
    if (!d) return -1;
    pid_t found = -1;
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.') continue;
        std::string comm = read_file(dir + "/" + e->d_name + "/comm");
        if (!comm.empty() && comm.back() == '\n') comm.pop_back();
        if (comm == name) found = static_cast<pid_t>(std::atol(e->d_name));
    }
    ::closedir(d);
    return found;
}

// CPU seconds used so far by one thread of `pid`; -1 on error.
inline double thread_cpu_seconds(pid_t pid, pid_t tid) {
    return stat_cpu_seconds("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/stat");
}

// Samples `probe` every `interval` seconds on a thread of its own, keeping the maximum.
class PeakSampler {
public:
    PeakSampler(std::function<long()> probe, double interval)
        : probe_(std::move(probe)), thread_([this, interval] {
              while (!stop_.load()) {
                  long v = probe_();
                  long m = peak_.load();
                  while (v > m && !peak_.compare_exchange_weak(m, v)) {}
                  sleep_s(interval);
              }
          }) {}
    ~PeakSampler() { stop(); }
    void stop() {
        stop_.store(true);
        if (thread_.joinable()) thread_.join();
    }
    long peak() const { return peak_.load(); }

private:
    std::function<long()> probe_;
    std::atomic<bool> stop_{false};
    std::atomic<long> peak_{-1};
    std::thread thread_;
};

// ---------------------------------------------------------------------------
// Backends: small TCP servers served by one poll() thread each
// ---------------------------------------------------------------------------

enum class Kind {
    Echo,          // writes back what it reads; closes after the peer's EOF
    Name,          // writes "<id>\n", half-closes, closes after the peer's EOF
    Greeter,       // writes "HELLO <id>\n" before reading anything, then echoes
    UploadAnswer,  // reads to EOF, then answers "<byte count> <fnv1a hex>\n" and closes
    Source,        // sends source_bytes of Pattern(seed), then half-closes (or holds)
};

struct BackendConfig {
    Kind kind = Kind::Echo;
    std::string id = "B";
    std::string host = "127.0.0.1";
    uint16_t port = 0;            // 0: any free port
    uint64_t seed = 1;            // Source
    uint64_t source_bytes = 0;    // Source
    bool hold_open = false;       // Source: after sending, keep the connection open (no FIN)
};

class Backend {
public:
    explicit Backend(BackendConfig cfg) : cfg_(std::move(cfg)), port_(cfg_.port), wake_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
        int err = 0;
        if (!wake_ || !start(&err))
            throw std::runtime_error("backend " + cfg_.id + ": cannot listen on " + host_port(cfg_.host, port_) + ": " + std::strerror(err));
    }
    ~Backend() { stop(); }
    Backend(const Backend&) = delete;
    Backend& operator=(const Backend&) = delete;

    static std::unique_ptr<Backend> make(Kind kind, const std::string& id, const std::string& host = "127.0.0.1", uint16_t port = 0) {
        BackendConfig c;
        c.kind = kind;
        c.id = id;
        c.host = host;
        c.port = port;
        return std::make_unique<Backend>(c);
    }
    static std::unique_ptr<Backend> source(const std::string& id, uint64_t bytes, uint64_t seed, bool hold_open = false) {
        BackendConfig c;
        c.kind = Kind::Source;
        c.id = id;
        c.source_bytes = bytes;
        c.seed = seed;
        c.hold_open = hold_open;
        return std::make_unique<Backend>(c);
    }

    uint16_t port() const { return port_; }
    const std::string& host() const { return cfg_.host; }
    std::string address() const { return host_port(cfg_.host, port_); }
    const std::string& id() const { return cfg_.id; }
    std::string greeting() const { return "HELLO " + cfg_.id + "\n"; }
    long connections() const { return accepted_.load(); }  // accepted since creation
    long active() const { return active_.load(); }         // open right now
    long peak() const { return peak_.load(); }             // most open at once since creation
    bool running() const { return thread_.joinable(); }

    // (Re)starts listening on the same port (SO_REUSEADDR).
    bool start(int* err = nullptr) {
        if (thread_.joinable()) return true;
        int e = 0;
        Fd l = listen_socket(cfg_.host, port_, true, 1024, &e);
        if (!l) {
            if (err) *err = e;
            return false;
        }
        port_ = local_port(l.get());
        stop_.store(false);
        int fd = l.release();
        thread_ = std::thread([this, fd] { run(Fd(fd)); });
        return true;
    }

    // Stops the thread and closes every socket, listening one included. With abort, the
    // connections are reset (SO_LINGER 0), as if the server had crashed.
    void stop(bool abort = false) {
        if (!thread_.joinable()) return;
        abort_.store(abort);
        stop_.store(true);
        uint64_t one = 1;
        ssize_t r = ::write(wake_.get(), &one, sizeof one);
        (void)r;
        thread_.join();
    }
    void kill() { stop(true); }

    bool wait_connections(long n, double timeout) const {
        return wait_until([&] { return connections() >= n; }, timeout);
    }

private:
    struct Conn {
        Fd fd;
        std::string out;
        size_t out_off = 0;
        bool peer_eof = false;
        bool shut_wr = false;
        bool dead = false;
        uint64_t src_left = 0;
        Pattern pat{0};
        uint64_t in_bytes = 0;
        Fnv1a fnv;
        size_t pending() const { return out.size() - out_off; }
    };

    static constexpr size_t kEchoCap = 1u << 20;  // stop reading while this much is unsent

    bool echoes() const { return cfg_.kind == Kind::Echo || cfg_.kind == Kind::Greeter; }

    bool want_read(const Conn& c) const { return !c.peer_eof && (!echoes() || c.pending() < kEchoCap); }
    bool want_write(const Conn& c) const { return c.pending() > 0 || c.src_left > 0; }

    void on_open(Conn& c) {
        switch (cfg_.kind) {
            case Kind::Name: c.out = cfg_.id + "\n"; break;
            case Kind::Greeter: c.out = greeting(); break;
            case Kind::Source:
                c.src_left = cfg_.source_bytes;
                c.pat = Pattern(cfg_.seed);
                break;
            default: break;
        }
    }

    void on_data(Conn& c, const char* p, size_t n) {
        c.in_bytes += n;
        if (echoes()) c.out.append(p, n);
        if (cfg_.kind == Kind::UploadAnswer) c.fnv.update(p, n);
    }

    void on_eof(Conn& c) {
        c.peer_eof = true;
        if (cfg_.kind == Kind::UploadAnswer) c.out += std::to_string(c.in_bytes) + " " + c.fnv.hex() + "\n";
    }

    void do_read(Conn& c, std::vector<char>& buf) {
        for (int i = 0; i < 16 && want_read(c); ++i) {
            ssize_t k = ::recv(c.fd.get(), buf.data(), buf.size(), MSG_DONTWAIT);
            if (k > 0) {
                on_data(c, buf.data(), static_cast<size_t>(k));
            } else if (k == 0) {
                on_eof(c);
            } else if (errno == EINTR) {
                continue;
            } else {
                if (errno != EAGAIN && errno != EWOULDBLOCK) c.dead = true;
                return;
            }
        }
    }

    void do_write(Conn& c) {
        for (int i = 0; i < 16 && want_write(c); ++i) {
            if (c.pending() == 0) {  // Source: make the next chunk
                size_t k = static_cast<size_t>(std::min<uint64_t>(c.src_left, 256 * 1024));
                c.out.resize(k);
                c.out_off = 0;
                c.pat.fill(&c.out[0], k);
                c.src_left -= k;
            }
            ssize_t k = ::send(c.fd.get(), c.out.data() + c.out_off, c.pending(), MSG_NOSIGNAL | MSG_DONTWAIT);
            if (k > 0) {
                c.out_off += static_cast<size_t>(k);
                if (c.pending() == 0) {
                    c.out.clear();
                    c.out_off = 0;
                }
            } else if (k < 0 && errno == EINTR) {
                continue;
            } else {
                if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK) c.dead = true;
                return;
            }
        }
    }

    // After any event: close when the peer is done and so are we; half-close when we
    // have said everything (Name, Source) so that the peer sees EOF.
    void settle(Conn& c) {
        if (c.dead || want_write(c)) return;
        if (c.peer_eof) {
            c.dead = true;
            return;
        }
        bool says_all_then_fin = cfg_.kind == Kind::Name || (cfg_.kind == Kind::Source && !cfg_.hold_open);
        if (says_all_then_fin && !c.shut_wr) {
            ::shutdown(c.fd.get(), SHUT_WR);
            c.shut_wr = true;
        }
    }

    void run(Fd listener) {
        std::vector<std::unique_ptr<Conn>> conns;
        std::vector<pollfd> pfds;
        std::vector<char> buf(64 * 1024);
        while (!stop_.load()) {
            pfds.clear();
            pfds.push_back({wake_.get(), POLLIN, 0});
            pfds.push_back({listener.get(), POLLIN, 0});
            for (auto& c : conns) {
                short ev = 0;
                if (want_read(*c)) ev |= POLLIN;
                if (want_write(*c)) ev |= POLLOUT;
                pfds.push_back({c->fd.get(), ev, 0});
            }
            int n = ::poll(pfds.data(), pfds.size(), 1000);
            if (n < 0 && errno != EINTR) break;
            if (n <= 0) continue;
            if (pfds[0].revents) {
                uint64_t v;
                ssize_t r = ::read(wake_.get(), &v, sizeof v);
                (void)r;
            }
            size_t polled = pfds.size() - 2;  // conns accepted below were not polled yet
            for (size_t i = 0; i < polled; ++i) {
                Conn& c = *conns[i];
                short re = pfds[i + 2].revents;
                if (re == 0) continue;
                if (re & (POLLIN | POLLHUP | POLLERR)) do_read(c, buf);
                if (!c.dead && (re & (POLLOUT | POLLERR))) do_write(c);
                settle(c);
            }
            if (pfds[1].revents & POLLIN) {
                for (int i = 0; i < 64; ++i) {
                    int fd = ::accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    int one = 1;
                    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    auto c = std::make_unique<Conn>();
                    c->fd = Fd(fd);
                    accepted_.fetch_add(1);
                    const long open = active_.fetch_add(1) + 1;
                    if (open > peak_.load()) peak_.store(open);  // this thread alone writes it
                    on_open(*c);
                    do_write(*c);
                    settle(*c);
                    conns.push_back(std::move(c));
                }
            }
            for (auto& c : conns)
                if (c->dead) {
                    c.reset();
                    active_.fetch_sub(1);
                }
            conns.erase(std::remove(conns.begin(), conns.end(), nullptr), conns.end());
        }
        bool abort = abort_.load();
        for (auto& c : conns) {
            if (abort) c->fd.abort();
            active_.fetch_sub(1);
        }
        conns.clear();
    }

    BackendConfig cfg_;
    uint16_t port_;
    Fd wake_;
    std::atomic<bool> stop_{false};
    std::atomic<bool> abort_{false};
    std::atomic<long> accepted_{0};
    std::atomic<long> active_{0};
    std::atomic<long> peak_{0};
    std::thread thread_;
};

}  // namespace harness
