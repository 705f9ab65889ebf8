// soak.cpp - `make soak`: iawlb for a long time under a seeded random mix of
// sessions, in front of backends that are killed and restarted, every byte checked.
//
//   soak --seconds N --seed S --iawlb PATH [--clients K] [--backends N]
//        [--max-mib M] [--warmup S] [--rss-slack-mib M]
//
// The set-up. One balancer process, in front of N backends that are threads of this
// program (SoakBackend), each on a port of its own below the kernel's ephemeral
// range: a restarted backend gets its port back, and no other program on the
// machine is handed it while the backend is down. The balancer runs with
// --send-proxy, and that is what makes every check below exact: the PROXY header
// tells the backend the client's port, the client has registered its session's plan
// under that port (Registry) as soon as connect() chose it, so any backend can serve
// any kind of session (speak first or wait, send how much, echo or count), and it
// records in the session which backend served it and how its side ended.
//
// The load. K client threads, each with its own RNG seeded from --seed and its index
// (so the sequence of sessions each thread runs is the same for the same seed),
// run sessions of these kinds, one connection each:
//   short               1-3 echo round trips, then the client's half-close and EOF
//   long                5-30 round trips with pauses, up to about 15 s
//   greet               the server speaks first (HELLO <backend>), then round trips
//   upload              up to --max-mib, half-close, the FNV-1a answer, then EOF
//   download            up to --max-mib of Pattern, FIN; the client half-closes first
//                       in half of them (the stream must still arrive in full)
//   echo                up to --max-mib sent and echoed at once, full duplex
//   server-half-close   the server sends and half-closes while the client is still
//                       sending; the rest of the upload must still reach it
//   client-reset        SO_LINGER 0 in the middle of a download, an upload or an echo;
//                       the server must see a reset, never a clean end
//   stalled-reader      a download whose client stops reading for 0.5-2 s, once or
//                       twice, then reads and checks the rest
// Every byte up is checked by the backend against the client's Pattern as it
// arrives, every byte down by the client; each session then waits for the
// backend's record of its own end (clean, with every byte the client sent).
//
// The chaos. The main thread kills a backend (its connections reset, or closed, as
// if it crashed) or restarts one every 0.3-2.5 s, but never kills the last one
// running: a healthy destination exists at every moment. So a session that fails is
// explained only if its backend was killed while serving it (the backend recorded
// "killed" before its sockets went), or, for a session no backend had taken yet,
// if some backend was killed during it. Anything else is an error while a healthy
// destination existed. Corrupted bytes are never excused.
//
// The balancer. A sampler thread reads its descriptors, threads and RSS every 2 s.
// At the end the load stops, the backends are all restarted, the balancer's
// connections drain (its statistics say when), and then: its sockets and its other
// descriptors must be back to what they were before the load (its pipes may hold the
// spare pipes of its workers), its threads the same all along, its RSS no more than
// --rss-slack-mib above its level after the warm-up, the connections it accepted as
// many as the clients made, and after SIGTERM it must exit 0 within its grace, with
// no sanitizer report in its log. The last line is "soak: PASS" or "soak: FAIL (...)".
//
// Everything is bounded: every wait has a deadline, every loop a count, and every
// thread and the balancer are stopped on every way out, SIGINT and SIGTERM included.

#include "harness.hpp"

#include <cinttypes>
#include <csignal>
#include <iomanip>
#include <list>
#include <map>
#include <mutex>

using namespace harness;

namespace {

// ------------------------------------------------------------------ the build
// The soak program is compiled with the balancer's flags (make's CXXFLAGS), so a
// sanitizer here means one in the balancer too: everything is slower, and the
// waits below are longer by kSlow.

#if defined(__SANITIZE_THREAD__)
constexpr int kSanitizer = 2;
#elif defined(__SANITIZE_ADDRESS__)
constexpr int kSanitizer = 1;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr int kSanitizer = 2;
#elif __has_feature(address_sanitizer)
constexpr int kSanitizer = 1;
#else
constexpr int kSanitizer = 0;
#endif
#else
constexpr int kSanitizer = 0;
#endif

constexpr double kSlow = kSanitizer == 2 ? 5.0 : kSanitizer == 1 ? 3.0 : 1.0;
constexpr const char* kBuildName = kSanitizer == 2 ? "ThreadSanitizer" : kSanitizer == 1 ? "AddressSanitizer" : "plain";

constexpr uint64_t KiB = 1024, MiB = 1024 * 1024;
constexpr int kMaxBackends = 16;
constexpr int kWorkers = 2;      // the balancer's -w
constexpr int kSparePipes = 8;   // pipes a worker keeps spare (spare_max in the book's PipePool)
const std::string kLo = "127.0.0.1";

const double kIdle = 30.0 * kSlow;        // a session that moves nothing for this long has failed
const double kServerIdle = 60.0 * kSlow;  // the same on the backend's side
const double kRecord = 10.0 * kSlow;      // wait for the backend's record of a session's end

// ------------------------------------------------------------------ signals

std::atomic<bool> g_interrupted{false};
volatile std::sig_atomic_t g_signal = 0;

void on_signal(int sig) {
    if (g_interrupted.exchange(true)) ::_exit(128 + sig);  // a second signal: go now
    g_signal = sig;
}

// Sleeps, waking early on an interrupt.
void nap(double seconds) {
    Deadline d(seconds);
    while (!d.expired() && !g_interrupted.load()) sleep_s(std::min(0.05, d.left()));
}

// ------------------------------------------------------------------ small tools

// SplitMix64: small, fast, and the same on every platform.
class Rng {
public:
    explicit Rng(uint64_t seed) : s_(seed) {}
    uint64_t next() {
        uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    uint64_t below(uint64_t n) { return n ? next() % n : 0; }
    uint64_t range(uint64_t lo, uint64_t hi) { return hi <= lo ? lo : lo + below(hi - lo + 1); }  // inclusive
    double uniform(double lo, double hi) { return lo + (hi - lo) * static_cast<double>(next() >> 11) * 0x1.0p-53; }
    bool chance(double p) { return uniform(0, 1) < p; }

private:
    uint64_t s_;
};

uint64_t mix(uint64_t a, uint64_t b) { return Rng(a * 0x9E3779B97F4A7C15ull ^ (b + 0x632BE59BD9B4E019ull)).next(); }

std::string human(uint64_t b) {
    char buf[64];
    if (b >= 1024 * MiB) std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(b) / (1024.0 * MiB));
    else if (b >= MiB) std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(b) / MiB);
    else if (b >= KiB) std::snprintf(buf, sizeof buf, "%.1f KiB", static_cast<double>(b) / KiB);
    else std::snprintf(buf, sizeof buf, "%" PRIu64 " B", b);
    return buf;
}

std::mutex g_print_mutex;

void say(const std::string& line) {
    std::lock_guard<std::mutex> lock(g_print_mutex);
    std::fprintf(stdout, "soak: %s\n", line.c_str());
    std::fflush(stdout);
}

// Notes of what went wrong: all counted, the first 40 printed at once.
class Notes {
public:
    void add(const std::string& s) {
        std::lock_guard<std::mutex> lock(m_);
        if (++count_ <= 40) say("! " + s);
    }
    long count() {
        std::lock_guard<std::mutex> lock(m_);
        return count_;
    }

private:
    std::mutex m_;
    long count_ = 0;
};
Notes g_notes;

// ------------------------------------------------------------------ sessions

enum Kind { Short, Long, Greet, Upload, Download, Echo, ServerHalfClose, ClientReset, Stall, kKinds };
const char* const kKindNames[kKinds] = {"short",  "long", "greet",         "upload",        "download",
                                        "echo",   "server-half-close", "client-reset", "stalled-reader"};
const int kKindWeights[kKinds] = {22, 6, 10, 12, 12, 10, 8, 12, 8};

// What a session does. The backend reads the first part; the plan does not change
// once the session is registered.
struct Plan {
    Kind kind = Short;
    // the backend's side
    bool greet = false;      // say "HELLO <backend>\n" before reading anything
    bool echo = false;       // write back what arrives
    bool answer = false;     // after the client's EOF, answer "<bytes> <fnv1a>\n"
    bool fin_first = false;  // half-close as soon as `down` is sent, not after the client's EOF
    uint64_t down = 0;       // bytes of Pattern(down_seed) to send
    uint64_t down_seed = 0;
    uint64_t up = 0;         // bytes of Pattern(up_seed) the client will send (at most)
    uint64_t up_seed = 0;
    // the client's side
    std::vector<uint64_t> rounds;  // echo round trips: bytes each
    std::vector<double> pauses;    // before each round trip, or each stall's length
    std::vector<uint64_t> stalls;  // stalled-reader: stop reading after this many bytes
    bool client_shut_first = false;
    int variant = 0;           // client-reset: 0 download, 1 upload, 2 echo
    uint64_t reset_at = 0;     // client-reset: bytes received (download) or sent before it
    uint64_t first_part = 0;   // server-half-close: bytes sent before the server's FIN is awaited

    std::string str() const {
        std::ostringstream os;
        os << kKindNames[kind] << " up=" << up << " down=" << down;
        if (!rounds.empty()) os << " rounds=" << rounds.size();
        if (kind == ClientReset) os << " variant=" << variant << " reset_at=" << reset_at;
        if (kind == ServerHalfClose) os << " first_part=" << first_part;
        if (kind == Download) os << " client_shut_first=" << client_shut_first;
        for (uint64_t s : stalls) os << " stall_at=" << s;
        return os.str();
    }
};

enum class End { None, Clean, Reset, Killed, Error };
const char* end_name(End e) {
    switch (e) {
        case End::None: return "still open";
        case End::Clean: return "clean";
        case End::Reset: return "reset";
        case End::Killed: return "killed";
        case End::Error: return "error";
    }
    return "?";
}

// One session, shared by its client thread and the backend thread that serves it.
struct Session {
    Plan plan;
    std::mutex m;  // guards everything below
    int claims = 0;
    std::string served_by;  // "b2.3": backend 2, its third life
    End end = End::None;
    std::string end_what;
    uint64_t up_got = 0;  // what the backend received, all checked against the plan
    uint64_t up_fnv = 0;
};

// Sessions by the client's port.
class Registry {
public:
    void add(uint16_t port, const std::shared_ptr<Session>& s) {
        std::lock_guard<std::mutex> lock(m_);
        map_[port] = s;
    }
    void remove(uint16_t port, const Session* s) {
        std::lock_guard<std::mutex> lock(m_);
        auto it = map_.find(port);
        if (it != map_.end() && it->second.get() == s) map_.erase(it);
    }
    std::shared_ptr<Session> find(uint16_t port) {
        std::lock_guard<std::mutex> lock(m_);
        auto it = map_.find(port);
        return it == map_.end() ? nullptr : it->second;
    }

private:
    std::mutex m_;
    std::map<uint16_t, std::shared_ptr<Session>> map_;
};
Registry g_registry;

// When backends were killed. A kill is an interval, not an instant: it starts when
// the main thread decides (before any socket goes) and ends when the backend's
// listening socket is closed, which is when the kernel resets the connections in its
// backlog. A connection that the balancer made to the backend inside that interval,
// and that no backend thread ever claimed, is reset by the kill; with the kill
// recorded as its first instant only, such a session that began a moment after that
// instant was counted as an error while a healthy destination existed (a TSan run,
// where the interval lasts longest, met it).
class KillLog {
public:
    size_t begin(double t) {
        std::lock_guard<std::mutex> lock(m_);
        kills_.push_back({t, 1e300});
        return kills_.size() - 1;
    }
    void end(size_t i, double t) {
        std::lock_guard<std::mutex> lock(m_);
        kills_[i].second = t;
    }
    // Whether some kill overlapped the time from a to b.
    bool any_between(double a, double b) {
        std::lock_guard<std::mutex> lock(m_);
        for (auto& k : kills_)
            if (k.first <= b && k.second >= a) return true;
        return false;
    }

private:
    std::mutex m_;
    std::vector<std::pair<double, double>> kills_;
};
KillLog g_kills;

using Counter = std::atomic<uint64_t>;
struct Totals {
    Counter sessions[kKinds];
    Counter connections, up_sent, up_verified, down_got, down_verified;
    Counter corrupt_sessions, corrupt_bytes, lost_sessions, lost_bytes;
    Counter unexplained, cut_claimed, cut_unclaimed, aborted, ok;
    Counter client_resets, resets_seen, greetings, client_half_closes, server_half_closes, stalls;
    Counter probes, bad_headers, unknown_ports, duplicate_claims, backend_refused;
    Counter served[kMaxBackends];
};
Totals g_totals;  // static storage: all zero

uint16_t g_lb_port = 0;

// ------------------------------------------------------------------ the backends

constexpr size_t kEchoCap = 1u << 20;  // an echoing backend stops reading with this much unsent
constexpr size_t kMaxConnsPerBackend = 512;

class SoakBackend {
public:
    SoakBackend(int index, uint16_t port) : index_(index), port_(port) {}
    ~SoakBackend() { kill(true); }
    SoakBackend(const SoakBackend&) = delete;
    SoakBackend& operator=(const SoakBackend&) = delete;

    std::string name() const { return "b" + std::to_string(index_); }
    uint16_t port() const { return port_; }
    bool alive() const { return life_ != nullptr; }
    double killed_at() const { return killed_at_; }

    // A new life: listen on the port again, and serve.
    bool start(int* err = nullptr) {
        if (life_) return true;
        auto life = std::make_unique<Life>();
        int e = 0;
        life->listener = listen_socket(kLo, port_, true, 1024, &e);
        life->wake = Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!life->listener || !life->wake) {
            if (err) *err = life->listener ? errno : e;
            return false;
        }
        life->number = ++lives_;
        Life* l = life.get();
        life->acceptor = std::thread([this, l] { accept_loop(*l); });
        life_ = std::move(life);
        return true;
    }

    // The end of this life, as a crash: the listening socket goes and every connection
    // with it, reset (SO_LINGER 0), or closed as the kernel closes a dead process's
    // sockets (FIN, or a reset where unread bytes remain).
    void kill(bool reset) {
        if (!life_) return;
        size_t k = g_kills.begin(now());  // before any socket goes
        life_->reset.store(reset);
        life_->killed.store(true);
        uint64_t one = 1;
        ssize_t r = ::write(life_->wake.get(), &one, sizeof one);
        (void)r;
        life_->acceptor.join();  // the listener, and then every connection, are closed
        life_.reset();
        killed_at_ = now();
        g_kills.end(k, killed_at_);
    }

private:
    struct Conn {
        std::thread thread;
        std::atomic<bool> done{false};
    };
    struct Life {
        int number = 0;
        Fd listener, wake;
        std::atomic<bool> killed{false}, reset{true};
        std::thread acceptor;
    };

    void accept_loop(Life& life) {
        std::list<std::unique_ptr<Conn>> conns;
        for (long iter = 0; iter < 100000000L && !life.killed.load(); ++iter) {
            pollfd p[2] = {{life.listener.get(), POLLIN, 0}, {life.wake.get(), POLLIN, 0}};
            int r = ::poll(p, 2, 100);
            if (life.killed.load()) break;
            if (r > 0 && (p[0].revents & POLLIN)) {
                for (int i = 0; i < 64; ++i) {
                    int fd = ::accept4(life.listener.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    int one = 1;
                    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    if (conns.size() >= kMaxConnsPerBackend) {
                        Fd(fd).abort();
                        g_totals.backend_refused++;
                        continue;
                    }
                    conns.push_back(std::make_unique<Conn>());
                    Conn* c = conns.back().get();
                    c->thread = std::thread([this, &life, c, fd] {
                        serve(life, Fd(fd));
                        c->done.store(true);
                    });
                }
            }
            for (auto it = conns.begin(); it != conns.end();) {
                if ((*it)->done.load()) {
                    (*it)->thread.join();
                    it = conns.erase(it);
                } else {
                    ++it;
                }
            }
        }
        life.listener.reset();  // what was still in the backlog is reset by the kernel
        for (auto& c : conns) c->thread.join();
    }

    static void die(const Life& life, Fd& fd) {
        if (life.reset.load()) fd.abort();
        else fd.reset();
    }

    // Reads the PROXY header: the client's port, and what came after the header.
    // 0: no header (a health check, or a connection given up), the socket handled.
    uint16_t read_header(Life& life, Fd& fd, std::string& rest) {
        std::string in;
        size_t eol;
        Deadline d(10.0 * kSlow);
        for (int iter = 0; (eol = in.find("\r\n")) == std::string::npos; ++iter) {
            if (in.size() > 107 || iter > 100000) {
                g_totals.bad_headers++;
                g_notes.add("backend " + name() + ": no PROXY header in '" + in.substr(0, 120) + "'");
                fd.abort();
                return 0;
            }
            pollfd p[2] = {{fd.get(), POLLIN, 0}, {life.wake.get(), POLLIN, 0}};
            int r = ::poll(p, 2, std::min(200, d.poll_ms()));
            if (life.killed.load()) {
                die(life, fd);
                return 0;
            }
            if (r <= 0) {
                if (d.expired()) {
                    g_totals.bad_headers++;
                    g_notes.add("backend " + name() + ": no PROXY header within 10 s");
                    fd.abort();
                    return 0;
                }
                continue;
            }
            char buf[512];
            ssize_t k = ::recv(fd.get(), buf, sizeof buf, MSG_DONTWAIT);
            if (k > 0) {
                in.append(buf, static_cast<size_t>(k));
            } else if (k == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                if (in.empty()) g_totals.probes++;  // a health check, or a client gone before its header
                else {
                    g_totals.bad_headers++;
                    g_notes.add("backend " + name() + ": the connection ended inside the PROXY header");
                }
                return 0;
            }
        }
        std::istringstream hs(in.substr(0, eol));
        std::string w[6];
        for (auto& x : w) hs >> x;
        unsigned long cport = std::strtoul(w[4].c_str(), nullptr, 10);
        unsigned long dport = std::strtoul(w[5].c_str(), nullptr, 10);
        if (w[0] != "PROXY" || w[1] != "TCP4" || w[2] != kLo || w[3] != kLo || cport == 0 || cport > 65535 ||
            dport != g_lb_port) {
            g_totals.bad_headers++;
            g_notes.add("backend " + name() + ": bad PROXY header '" + in.substr(0, eol) + "'");
            fd.abort();
            return 0;
        }
        rest = in.substr(eol + 2);
        return static_cast<uint16_t>(cport);
    }

    void serve(Life& life, Fd fd) {
        std::string rest;
        uint16_t port = read_header(life, fd, rest);
        if (port == 0) return;
        // The client registers right after connect() returns, which is a moment after
        // its SYN: allow it a little time.
        std::shared_ptr<Session> s;
        for (Deadline d(3.0 * kSlow); !(s = g_registry.find(port));) {
            if (d.expired() || life.killed.load()) break;
            sleep_s(0.001);
        }
        if (!s) {
            if (!life.killed.load()) g_totals.unknown_ports++;
            die(life, fd);
            return;
        }
        std::string me = name() + "." + std::to_string(life.number);
        {
            std::lock_guard<std::mutex> lock(s->m);
            if (s->claims++ > 0) {
                g_totals.duplicate_claims++;
                g_notes.add("backend " + me + ": a second connection for the session of port " + std::to_string(port));
                fd.abort();
                return;
            }
            s->served_by = me;
        }
        g_totals.served[index_]++;
        run_script(life, fd, *s, me, rest);
    }

    // The backend's side of a session: one poll loop, both directions at once.
    void run_script(Life& life, Fd& fd, Session& s, const std::string& me, const std::string& rest) {
        const Plan& pl = s.plan;
        std::string out;
        size_t off = 0;
        if (pl.greet) out = "HELLO " + me + "\n";
        uint64_t gen_left = pl.down;
        Pattern gen(pl.down_seed), check(pl.up_seed);
        uint64_t got = 0;
        int64_t bad_at = -1;
        Fnv1a fnv;
        bool peer_eof = false, shut = false;
        std::vector<char> buf(64 * KiB), want(64 * KiB);

        auto take = [&](const char* p, size_t n) {
            if (bad_at < 0) {
                if (got + n > pl.up) {
                    bad_at = static_cast<int64_t>(pl.up);  // more than the client sends
                } else {
                    check.fill(want.data(), n);
                    if (std::memcmp(p, want.data(), n) != 0) {
                        size_t i = 0;
                        while (p[i] == want[i]) ++i;
                        bad_at = static_cast<int64_t>(got + i);
                    }
                }
            }
            fnv.update(p, n);
            got += n;
            if (pl.echo) out.append(p, n);
        };
        auto finish = [&](End e, const std::string& what) {
            {
                std::lock_guard<std::mutex> lock(s.m);
                s.end = e;
                s.end_what = what;
                s.up_got = got;
                s.up_fnv = fnv.h;
            }
            if (bad_at >= 0) {
                g_totals.corrupt_sessions++;
                g_totals.corrupt_bytes += got - static_cast<uint64_t>(bad_at);
                g_notes.add("backend " + me + ": upload corrupted at byte " + std::to_string(bad_at) + " of " +
                            std::to_string(got) + " (" + pl.str() + ")");
            } else {
                g_totals.up_verified += got;
            }
        };

        if (!rest.empty()) take(rest.data(), rest.size());
        Deadline idle(kServerIdle);
        for (long iter = 0; iter < 100000000L; ++iter) {
            size_t pending = out.size() - off;
            if (!shut && pending == 0 && gen_left == 0 && (pl.fin_first || peer_eof)) {
                ::shutdown(fd.get(), SHUT_WR);
                shut = true;
            }
            if (shut && peer_eof) {
                finish(End::Clean, "");
                return;  // both ends are over: the close sends nothing more, and nothing is unread
            }
            short ev = 0;
            if (!peer_eof && (!pl.echo || pending < kEchoCap)) ev |= POLLIN;
            if (pending > 0 || gen_left > 0) ev |= POLLOUT;
            pollfd p[2] = {{fd.get(), ev, 0}, {life.wake.get(), POLLIN, 0}};
            int r = ::poll(p, 2, std::min(200, idle.poll_ms()));
            if (life.killed.load()) {
                finish(End::Killed, "killed");
                die(life, fd);
                return;
            }
            if (r < 0 && errno != EINTR) {
                finish(End::Error, std::string("poll: ") + std::strerror(errno));
                fd.abort();
                return;
            }
            if (r <= 0) {
                if (idle.expired()) {
                    finish(End::Error, "nothing moved for " + std::to_string(static_cast<int>(kServerIdle)) + " s");
                    fd.abort();
                    return;
                }
                continue;
            }
            bool moved = false;
            int err = 0;
            const char* op = "";
            short re = p[0].revents;
            if ((ev & POLLIN) && (re & (POLLIN | POLLHUP | POLLERR))) {
                for (int i = 0; i < 16 && !peer_eof; ++i) {
                    if (pl.echo && out.size() - off >= kEchoCap) break;
                    ssize_t k = ::recv(fd.get(), buf.data(), buf.size(), MSG_DONTWAIT);
                    if (k > 0) {
                        take(buf.data(), static_cast<size_t>(k));
                        moved = true;
                    } else if (k == 0) {
                        peer_eof = true;
                        moved = true;
                        if (pl.answer) out += std::to_string(got) + " " + fnv.hex() + "\n";
                    } else if (errno == EINTR) {
                        continue;
                    } else {
                        if (errno != EAGAIN && errno != EWOULDBLOCK) err = errno, op = "recv";
                        break;
                    }
                }
            }
            if (err == 0 && (ev & POLLOUT) && (re & (POLLOUT | POLLHUP | POLLERR))) {
                for (int i = 0; i < 16; ++i) {
                    if (off == out.size()) {
                        out.clear();
                        off = 0;
                        if (gen_left == 0) break;
                        size_t k = static_cast<size_t>(std::min<uint64_t>(gen_left, 256 * KiB));
                        out.resize(k);
                        gen.fill(&out[0], k);
                        gen_left -= k;
                    }
                    ssize_t k = ::send(fd.get(), out.data() + off, out.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
                    if (k > 0) {
                        off += static_cast<size_t>(k);
                        moved = true;
                    } else if (k < 0 && errno == EINTR) {
                        continue;
                    } else {
                        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK) err = errno, op = "send";
                        break;
                    }
                }
            }
            if (off == out.size()) {
                out.clear();
                off = 0;
            } else if (off >= kEchoCap) {
                out.erase(0, off);
                off = 0;
            }
            if (err) {
                finish(err == ECONNRESET || err == EPIPE ? End::Reset : End::Error,
                       std::string(op) + ": " + std::strerror(err));
                fd.abort();
                return;
            }
            if (moved) idle = Deadline(kServerIdle);
        }
        finish(End::Error, "too many turns");
        fd.abort();
    }

    int index_;
    uint16_t port_;
    int lives_ = 0;
    double killed_at_ = 0;
    std::unique_ptr<Life> life_;
};

// ------------------------------------------------------------------ the client's I/O

constexpr uint64_t kToEof = UINT64_MAX;

// Both directions of a client connection: sends Pattern(up_seed), receives either
// Pattern(down_seed) (checked byte by byte) or a short text.
class Pump {
public:
    enum class Sink { Pattern, Text };
    enum class Stop { Done, Eof, Error, Timeout, Corrupt, Interrupted };

    Pump(int fd, uint64_t up_seed, Sink sink, uint64_t down_seed, uint64_t down_max)
        : fd_(fd), up_(up_seed), sink_(sink), down_(down_seed), down_max_(down_max), buf_(256 * KiB), want_(256 * KiB) {}

    // Sends until `up_goal` bytes are sent (then SHUT_WR if `shut`), and receives until
    // `down_goal` bytes have arrived (kToEof: until the end of the stream). With
    // read_along it also reads whatever arrives meanwhile (an echo while sending).
    Stop run(uint64_t up_goal, bool shut, uint64_t down_goal, bool read_along = false) {
        Deadline idle(kIdle);
        for (long iter = 0; iter < 100000000L; ++iter) {
            if (g_interrupted.load()) return Stop::Interrupted;
            if (sent >= up_goal && shut && !shut_) {
                ::shutdown(fd_, SHUT_WR);
                shut_ = true;
            }
            bool up_done = sent >= up_goal && (!shut || shut_);
            bool down_done = down_goal == kToEof ? eof : got >= down_goal;
            if (!down_done && eof) return Stop::Eof;  // ended early
            if (up_done && down_done) return Stop::Done;
            short ev = 0;
            if (!eof && (!down_done || read_along)) ev |= POLLIN;
            if (sent < up_goal) ev |= POLLOUT;
            pollfd p{fd_, ev, 0};
            int r = ::poll(&p, 1, std::min(100, idle.poll_ms()));
            if (r < 0 && errno != EINTR) return fail("poll", errno);
            if (r <= 0) {
                if (idle.expired()) return Stop::Timeout;
                continue;
            }
            bool moved = false;
            if ((ev & POLLIN) && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
                size_t cap = buf_.size();
                if (down_goal != kToEof && !read_along) cap = static_cast<size_t>(std::min<uint64_t>(cap, down_goal - got));
                ssize_t k = ::recv(fd_, buf_.data(), cap, MSG_DONTWAIT);
                if (k > 0) {
                    if (!take(static_cast<size_t>(k))) return Stop::Corrupt;
                    moved = true;
                } else if (k == 0) {
                    eof = true;
                    moved = true;
                } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    return fail("recv", errno);
                }
            }
            if ((ev & POLLOUT) && (p.revents & (POLLOUT | POLLHUP | POLLERR))) {
                for (int i = 0; i < 8 && sent < up_goal; ++i) {
                    if (chunk_off_ == chunk_.size()) {
                        size_t k = static_cast<size_t>(std::min<uint64_t>(64 * KiB, up_goal - sent));
                        chunk_.resize(k);
                        up_.fill(chunk_.data(), k);
                        fnv.update(chunk_.data(), k);
                        chunk_off_ = 0;
                    }
                    ssize_t k = ::send(fd_, chunk_.data() + chunk_off_, chunk_.size() - chunk_off_, MSG_NOSIGNAL | MSG_DONTWAIT);
                    if (k > 0) {
                        chunk_off_ += static_cast<size_t>(k);
                        sent += static_cast<uint64_t>(k);
                        moved = true;
                    } else if (k < 0 && errno == EINTR) {
                        continue;
                    } else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                        break;
                    } else {
                        return fail("send", errno);
                    }
                }
            }
            if (moved) idle = Deadline(kIdle);
        }
        return Stop::Timeout;
    }

    // Why `st` is not Done, in words.
    std::string why(Stop st) const {
        switch (st) {
            case Stop::Done: return "";
            case Stop::Eof: return "EOF after " + std::to_string(got) + " bytes";
            case Stop::Error: return std::string(op) + ": " + std::strerror(err) + " after " + std::to_string(got) + " bytes in, " + std::to_string(sent) + " out";
            case Stop::Timeout: return "nothing moved for " + std::to_string(static_cast<int>(kIdle)) + " s (" + std::to_string(got) + " bytes in, " + std::to_string(sent) + " out)";
            case Stop::Corrupt: return "corrupted at byte " + std::to_string(bad_at) + " of " + std::to_string(got);
            case Stop::Interrupted: return "interrupted";
        }
        return "?";
    }

    uint64_t sent = 0, got = 0;
    bool eof = false;
    int64_t bad_at = -1;
    std::string text;
    Fnv1a fnv;  // of everything generated for sending
    int err = 0;
    const char* op = "";

private:
    Stop fail(const char* what, int e) {
        op = what;
        err = e;
        return Stop::Error;
    }

    bool take(size_t k) {
        if (sink_ == Sink::Text) {
            text.append(buf_.data(), k);
            got += k;
            if (text.size() > 256) {
                bad_at = 256;
                return false;
            }
            return true;
        }
        if (got + k > down_max_) {
            bad_at = static_cast<int64_t>(down_max_);  // more than was sent
            got += k;
            return false;
        }
        down_.fill(want_.data(), k);
        if (std::memcmp(buf_.data(), want_.data(), k) != 0) {
            size_t i = 0;
            while (buf_[i] == want_[i]) ++i;
            bad_at = static_cast<int64_t>(got + i);
            got += k;
            return false;
        }
        got += k;
        return true;
    }

    int fd_;
    Pattern up_;
    std::vector<char> chunk_;
    size_t chunk_off_ = 0;
    bool shut_ = false;
    Sink sink_;
    Pattern down_;
    uint64_t down_max_;
    std::vector<char> buf_, want_;
};

// Reads one line of at most `max` bytes (the greeting), nothing after it.
std::string read_line(int fd, size_t max, std::string& why) {
    std::string line;
    Deadline idle(kIdle);
    while (line.empty() || line.back() != '\n') {
        if (g_interrupted.load()) {
            why = "interrupted";
            return line;
        }
        if (line.size() >= max) {
            why = "no end of line in '" + line + "'";
            return line;
        }
        char c;
        ssize_t k = ::recv(fd, &c, 1, MSG_DONTWAIT);
        if (k == 1) {
            line += c;
            continue;
        }
        if (k == 0) {
            why = "EOF after '" + line + "'";
            return line;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            why = std::string("recv: ") + std::strerror(errno);
            return line;
        }
        if (idle.expired()) {
            why = "no greeting";
            return line;
        }
        pollfd p{fd, POLLIN, 0};
        ::poll(&p, 1, std::min(100, idle.poll_ms()));
    }
    return line;
}

// ------------------------------------------------------------------ the clients

uint64_t g_max_bytes = 32 * MiB;

struct Result {
    std::string error;  // what went wrong, "" if nothing
    uint64_t lost = 0;  // bytes a clean end of stream did not deliver
    int64_t bad_at = -1;
    uint64_t corrupt_bytes = 0;
    bool interrupted = false;
};

class Client {
public:
    Client(int index, uint64_t seed) : index_(index), rng_(mix(seed, static_cast<uint64_t>(index) + 1)) {}

    void run(const std::atomic<bool>& stop) {
        for (long n = 0; n < 100000000L && !stop.load() && !g_interrupted.load(); ++n) {
            session();
            nap(rng_.uniform(0.002, 0.03));  // keep the load moderate: the CPUs are shared
        }
    }

private:
    Kind pick_kind() {
        int total = 0;
        for (int w : kKindWeights) total += w;
        int x = static_cast<int>(rng_.below(static_cast<uint64_t>(total)));
        for (int k = 0; k < kKinds; ++k) {
            if (x < kKindWeights[k]) return static_cast<Kind>(k);
            x -= kKindWeights[k];
        }
        return Short;
    }

    // Mostly small, some of a few MiB, a few of tens.
    uint64_t size(uint64_t max) {
        double u = rng_.uniform(0, 1);
        if (u < 0.45) return rng_.range(0, std::min<uint64_t>(64 * KiB, max));
        if (u < 0.85) return rng_.range(64 * KiB, std::min<uint64_t>(2 * MiB, max));
        return rng_.range(std::min<uint64_t>(2 * MiB, max), max);
    }

    Plan make_plan(Kind k) {
        Plan p;
        p.kind = k;
        p.up_seed = rng_.next();
        p.down_seed = rng_.next();
        auto rounds = [&](int lo, int hi, uint64_t max_bytes, double pause_lo, double pause_hi) {
            int n = static_cast<int>(rng_.range(static_cast<uint64_t>(lo), static_cast<uint64_t>(hi)));
            for (int i = 0; i < n; ++i) {
                p.rounds.push_back(rng_.range(1, max_bytes));
                p.pauses.push_back(pause_hi > 0 ? rng_.uniform(pause_lo, pause_hi) : 0.0);
                p.up += p.rounds.back();
            }
            p.echo = true;
        };
        switch (k) {
            case Short: rounds(1, 3, 2000, 0, 0); break;
            case Long: rounds(5, 30, 4000, 0.02, 0.5); break;
            case Greet:
                p.greet = true;
                rounds(1, 5, 8000, 0, 0.05);
                break;
            case Upload:
                p.answer = true;
                p.up = size(g_max_bytes);
                break;
            case Download:
                p.fin_first = true;
                p.down = size(g_max_bytes);
                p.client_shut_first = rng_.chance(0.5);
                break;
            case Echo:
                p.echo = true;
                p.up = size(g_max_bytes);
                break;
            case ServerHalfClose:
                p.fin_first = true;
                p.down = rng_.range(0, 256 * KiB);
                p.first_part = rng_.range(0, 64 * KiB);
                p.up = p.first_part + rng_.range(1, std::min<uint64_t>(4 * MiB, g_max_bytes));
                break;
            case ClientReset: {
                p.variant = static_cast<int>(rng_.below(3));
                uint64_t total = rng_.range(256 * KiB, std::max<uint64_t>(256 * KiB, std::min<uint64_t>(16 * MiB, g_max_bytes)));
                p.reset_at = rng_.range(1, total / 2);
                if (p.variant == 0) p.fin_first = true, p.down = total;
                if (p.variant == 1) p.answer = true, p.up = total;
                if (p.variant == 2) p.echo = true, p.up = total;
                break;
            }
            case Stall: {
                p.fin_first = true;
                p.down = rng_.range(std::min<uint64_t>(MiB, g_max_bytes), g_max_bytes);
                int n = static_cast<int>(rng_.range(1, 2));
                for (int i = 0; i < n; ++i) {
                    p.stalls.push_back(rng_.range(64 * KiB, p.down - 1));
                    p.pauses.push_back(rng_.uniform(0.5, 2.0));
                }
                std::sort(p.stalls.begin(), p.stalls.end());
                break;
            }
            default: break;
        }
        return p;
    }

    // A connection to the balancer, registered under its port as soon as it has one.
    std::string open(Fd& fd, uint16_t& port, const std::shared_ptr<Session>& s) {
        fd = tcp_socket(AF_INET);
        if (!fd) return std::string("socket: ") + std::strerror(errno);
        int one = 1;
        ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        SockAddr a;
        make_addr(kLo, g_lb_port, a);
        int rc = ::connect(fd.get(), a.ptr(), a.len);
        if (rc != 0 && errno != EINPROGRESS) return std::string("connect: ") + std::strerror(errno);
        port = local_port(fd.get());
        g_registry.add(port, s);
        if (rc != 0) {
            Deadline d(10.0 * kSlow);
            pollfd p{fd.get(), POLLOUT, 0};
            for (;;) {
                if (g_interrupted.load()) return "interrupted";
                int r = ::poll(&p, 1, std::min(100, d.poll_ms()));
                if (r > 0) break;
                if (r < 0 && errno != EINTR) return std::string("poll: ") + std::strerror(errno);
                if (d.expired()) return "connect: timed out";
            }
            int soerr = 0;
            socklen_t len = sizeof soerr;
            ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &soerr, &len);
            // A reset (not a refusal) means the handshake was done and the balancer
            // accepted it: a session cut by a backend kill before this thread, slow on a
            // loaded machine, came back to poll. The balancer counted it; so do we.
            if (soerr == ECONNRESET) g_totals.connections++;
            if (soerr) return std::string("connect: ") + std::strerror(soerr);
        }
        g_totals.connections++;
        return "";
    }

    // The backend's record of its end of the session: "" if it ended clean having
    // received `sent` bytes (each already checked against the plan), else why not.
    static std::string server_check(Session& s, uint64_t sent, uint64_t fnv, Result& r) {
        bool ended = wait_until([&] {
            std::lock_guard<std::mutex> lock(s.m);
            return s.end != End::None;
        }, kRecord, 0.002);
        std::lock_guard<std::mutex> lock(s.m);
        if (!ended) return "the server's side was still open " + std::to_string(static_cast<int>(kRecord)) + " s after the client's end";
        if (s.end != End::Clean) return std::string("the server's side ended ") + end_name(s.end) + ": " + s.end_what;
        if (s.up_got < sent) {
            r.lost += sent - s.up_got;
            return "the server received " + std::to_string(s.up_got) + " of " + std::to_string(sent) + " bytes";
        }
        if (s.up_got == sent && s.up_fnv != fnv) return "the server's checksum differs";
        return "";
    }

    static void check_pump(Pump::Stop st, const Pump& pm, const char* phase, Result& r) {
        if (st == Pump::Stop::Done || !r.error.empty()) return;
        if (st == Pump::Stop::Interrupted) r.interrupted = true;
        if (st == Pump::Stop::Corrupt) {
            r.bad_at = pm.bad_at;
            r.corrupt_bytes = pm.got - static_cast<uint64_t>(pm.bad_at);
        }
        r.error = std::string(phase) + ": " + pm.why(st);
    }

    // short, long, greet: echo round trips, then the client's half-close, then EOF.
    void rounds(Fd& fd, Session& s, Result& r, Pump& pm) {
        const Plan& p = s.plan;
        if (p.greet) {
            std::string why;
            std::string line = read_line(fd.get(), 64, why);
            if (!why.empty()) {
                r.interrupted = why == "interrupted";
                r.error = "greeting: " + why;
                return;
            }
            std::string by;
            {
                std::lock_guard<std::mutex> lock(s.m);
                by = s.served_by;
            }
            if (line != "HELLO " + by + "\n") {
                r.bad_at = 0;
                r.corrupt_bytes = line.size();
                r.error = "greeting '" + line.substr(0, line.size() - 1) + "' from the backend that took the session, " + by;
                return;
            }
            g_totals.greetings++;
        }
        uint64_t goal = 0;
        for (size_t i = 0; i < p.rounds.size() && r.error.empty(); ++i) {
            nap(p.pauses[i]);
            goal += p.rounds[i];
            check_pump(pm.run(goal, false, goal), pm, "round trip", r);
        }
        if (!r.error.empty()) return;
        check_pump(pm.run(goal, true, kToEof), pm, "after the half-close", r);
        if (r.error.empty() && pm.got != goal) r.lost = goal - pm.got, r.error = "echo short";
        if (r.error.empty()) g_totals.client_half_closes++;
        if (r.error.empty()) r.error = server_check(s, pm.sent, pm.fnv.h, r);
    }

    void session() {
        Kind k = pick_kind();
        auto s = std::make_shared<Session>();
        s->plan = make_plan(k);
        const Plan& p = s->plan;
        g_totals.sessions[k]++;
        double t0 = now();
        Result r;
        Fd fd;
        uint16_t port = 0;
        r.error = open(fd, port, s);
        if (r.error == "interrupted") r.interrupted = true;

        Pump::Sink sink = p.kind == Upload || (p.kind == ClientReset && p.variant == 1) ? Pump::Sink::Text : Pump::Sink::Pattern;
        uint64_t down_seed = p.echo ? p.up_seed : p.down_seed;
        uint64_t down_max = p.echo ? p.up : p.down;
        Pump pm(fd.get(), p.up_seed, sink, down_seed, down_max);

        if (r.error.empty()) {
            switch (k) {
                case Short:
                case Long:
                case Greet: rounds(fd, *s, r, pm); break;
                case Upload: {
                    check_pump(pm.run(p.up, true, kToEof), pm, "upload", r);
                    std::string want = std::to_string(p.up) + " " + pm.fnv.hex() + "\n";
                    if (r.error.empty() && pm.text != want) {
                        if (pm.text.empty()) r.error = "no answer after the upload";
                        else r.bad_at = 0, r.corrupt_bytes = pm.text.size(), r.error = "answer '" + pm.text + "' instead of '" + want + "'";
                    }
                    if (r.error.empty()) g_totals.client_half_closes++;
                    if (r.error.empty()) r.error = server_check(*s, pm.sent, pm.fnv.h, r);
                    break;
                }
                case Download:
                case Stall: {
                    for (size_t i = 0; i < p.stalls.size() && r.error.empty(); ++i) {
                        check_pump(pm.run(0, false, p.stalls[i]), pm, "before a stall", r);
                        if (r.error.empty()) nap(p.pauses[i]), g_totals.stalls++;
                    }
                    if (r.error.empty()) check_pump(pm.run(0, p.client_shut_first, kToEof), pm, "download", r);
                    if (pm.eof && pm.got < p.down && pm.bad_at < 0) r.lost = p.down - pm.got;
                    if (r.error.empty() && r.lost) r.error = "download short";
                    if (r.error.empty() && p.client_shut_first) g_totals.client_half_closes++;
                    fd.reset();  // the backend sees the end of the client's stream now
                    if (r.error.empty()) r.error = server_check(*s, 0, Fnv1a().h, r);
                    break;
                }
                case Echo: {
                    check_pump(pm.run(p.up, true, kToEof), pm, "echo", r);
                    if (pm.eof && pm.got < p.up && pm.bad_at < 0) r.lost = p.up - pm.got;
                    if (r.error.empty() && r.lost) r.error = "echo short";
                    if (r.error.empty()) r.error = server_check(*s, pm.sent, pm.fnv.h, r);
                    break;
                }
                case ServerHalfClose: {
                    // The server's FIN arrives while the client still has bytes to send.
                    check_pump(pm.run(p.first_part, false, kToEof), pm, "until the server's half-close", r);
                    if (pm.eof && pm.got < p.down && pm.bad_at < 0) r.lost = p.down - pm.got;
                    if (r.error.empty() && r.lost) r.error = "download short";
                    if (r.error.empty()) check_pump(pm.run(p.up, true, 0), pm, "upload after the server's half-close", r);
                    if (r.error.empty()) r.error = server_check(*s, pm.sent, pm.fnv.h, r);
                    if (r.error.empty()) g_totals.server_half_closes++;
                    break;
                }
                case ClientReset: reset_session(fd, *s, r, pm); break;
                default: break;
            }
        }
        fd.reset();

        g_totals.up_sent += pm.sent;
        g_totals.down_got += pm.got;
        g_totals.down_verified += pm.bad_at < 0 ? pm.got : static_cast<uint64_t>(pm.bad_at);
        conclude(*s, r, t0, port);
        g_registry.remove(port, s.get());
    }

    void reset_session(Fd& fd, Session& s, Result& r, Pump& pm) {
        const Plan& p = s.plan;
        if (p.variant == 0) {
            check_pump(pm.run(0, false, p.reset_at), pm, "download before the reset", r);
        } else {
            // Reset only once a backend has the session, so that there is one to see it.
            bool claimed = wait_until([&] {
                std::lock_guard<std::mutex> lock(s.m);
                return s.claims > 0;
            }, kRecord, 0.002);
            if (!claimed) r.error = "no backend took the session";
            if (r.error.empty()) check_pump(pm.run(p.reset_at, false, 0, p.variant == 2), pm, "sending before the reset", r);
        }
        if (!r.error.empty()) return;
        fd.abort();
        g_totals.client_resets++;
        bool ended = wait_until([&] {
            std::lock_guard<std::mutex> lock(s.m);
            return s.end != End::None;
        }, kRecord, 0.002);
        std::lock_guard<std::mutex> lock(s.m);
        if (!ended) r.error = "the server's side was still open " + std::to_string(static_cast<int>(kRecord)) + " s after the client's reset";
        else if (s.end == End::Reset) g_totals.resets_seen++;
        else if (s.end == End::Clean) r.error = "the client's reset reached the server as a clean end";
        else r.error = std::string("after the client's reset the server's side ended ") + end_name(s.end) + ": " + s.end_what;
    }

    // Counts the session: fine, corrupted, cut by a backend kill, or a failure.
    void conclude(Session& s, Result& r, double t0, uint16_t port) {
        if (r.interrupted || g_interrupted.load()) {
            g_totals.aborted++;
            return;
        }
        if (r.error.empty() && r.lost == 0 && r.bad_at < 0) {
            g_totals.ok++;
            return;
        }
        // The backend records its end before its sockets go: give it a moment.
        wait_until([&] {
            std::lock_guard<std::mutex> lock(s.m);
            return s.claims == 0 || s.end != End::None;
        }, 1.0 * kSlow, 0.002);
        int claims;
        End end;
        std::string by, what;
        {
            std::lock_guard<std::mutex> lock(s.m);
            claims = s.claims;
            end = s.end;
            by = s.served_by;
            what = s.end_what;
        }
        std::ostringstream os;
        os << "session " << s.plan.str() << " (client " << index_ << ", port " << port << ", " << std::fixed
           << std::setprecision(2) << now() - t0 << " s, served by " << (by.empty() ? "none" : by)
           << ", its side " << end_name(end) << (what.empty() ? "" : ": " + what) << "): " << r.error;
        if (r.bad_at >= 0) {
            g_totals.corrupt_sessions++;
            g_totals.corrupt_bytes += r.corrupt_bytes;
            g_notes.add("CORRUPTED " + os.str());
            return;
        }
        if (end == End::Killed) {
            g_totals.cut_claimed++;
            return;
        }
        if (claims == 0 && g_kills.any_between(t0, now())) {
            g_totals.cut_unclaimed++;
            return;
        }
        if (r.lost) {
            g_totals.lost_sessions++;
            g_totals.lost_bytes += r.lost;
        }
        g_totals.unexplained++;
        g_notes.add("FAILED " + os.str() + (r.lost ? ", lost " + std::to_string(r.lost) + " bytes" : ""));
    }

    int index_;
    Rng rng_;
};

// ------------------------------------------------------------------ the balancer

std::string http_get(uint16_t port, const std::string& path) {
    int e = 0;
    Fd c = connect_to(kLo, port, 5.0 * kSlow, &e);
    if (!c) return "";
    if (send_all(c.get(), "GET " + path + " HTTP/1.0\r\nHost: soak\r\n\r\n", 5.0 * kSlow) != Io::Ok) return "";
    std::string s;
    return recv_until_eof(c.get(), s, 10.0 * kSlow, 4 * MiB) == Io::Eof ? s : "";
}

// The value of an unlabelled metric, or -1.
long long metric(const std::string& text, const std::string& name) {
    for (size_t at = text.find(name + " "); at != std::string::npos; at = text.find(name + " ", at + 1))
        if (at == 0 || text[at - 1] == '\n') return std::strtoll(text.c_str() + at + name.size() + 1, nullptr, 10);
    return -1;
}

struct Sample {
    double t = 0;
    int fds = -1, sockets = 0, pipes = 0;  // all descriptors; of them, sockets and pipe ends
    long threads = -1, rss_kb = -1;
    int other() const { return fds - sockets - pipes; }
};

Sample sample(pid_t pid) {
    Sample s;
    s.t = now();
    std::string dir = "/proc/" + std::to_string(pid) + "/fd";
    if (DIR* d = ::opendir(dir.c_str())) {
        s.fds = 0;
        for (int i = 0; i < 1000000; ++i) {
            dirent* e = ::readdir(d);
            if (!e) break;
            if (e->d_name[0] == '.') continue;
            char link[256];
            ssize_t k = ::readlink((dir + "/" + e->d_name).c_str(), link, sizeof link - 1);
            link[k > 0 ? k : 0] = '\0';
            ++s.fds;
            if (std::strncmp(link, "socket:", 7) == 0) ++s.sockets;
            if (std::strncmp(link, "pipe:", 5) == 0) ++s.pipes;
        }
        ::closedir(d);
    }
    s.threads = proc_threads(pid);
    s.rss_kb = proc_rss_kb(pid);
    return s;
}

// The fewest sockets in `n` samples 0.2 s apart (a health-check probe holds one for
// a moment), with the rest of the last.
Sample quiet_sample(pid_t pid, int n = 5) {
    Sample best;
    for (int i = 0; i < n; ++i) {
        Sample s = sample(pid);
        if (best.fds < 0 || s.sockets <= best.sockets) best = s;
        if (i + 1 < n) sleep_s(0.2);
    }
    return best;
}

// The balancer's sockets that are not in `before` (inodes), with their TCP states
// from /proc/net/tcp: what a descriptor leak looks like.
std::vector<std::string> socket_inodes(pid_t pid) {
    std::vector<std::string> out;
    std::string dir = "/proc/" + std::to_string(pid) + "/fd";
    DIR* d = ::opendir(dir.c_str());
    if (!d) return out;
    for (int i = 0; i < 1000000; ++i) {
        dirent* e = ::readdir(d);
        if (!e) break;
        char link[256];
        ssize_t k = ::readlink((dir + "/" + e->d_name).c_str(), link, sizeof link - 1);
        link[k > 0 ? k : 0] = '\0';
        if (std::strncmp(link, "socket:[", 8) == 0) out.push_back(std::string(link + 8, std::strlen(link + 8) - 1));
    }
    ::closedir(d);
    return out;
}

std::string describe_sockets(const std::vector<std::string>& inodes, const std::vector<std::string>& before) {
    static const char* const states[] = {"?", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
                                         "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING"};
    std::map<std::string, std::string> by_inode;
    for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
        for (const std::string& l : split_lines(read_file(table))) {
            std::istringstream ls(l);
            std::string f[10];
            for (auto& x : f) ls >> x;
            unsigned st = static_cast<unsigned>(std::strtoul(f[3].c_str(), nullptr, 16));
            auto port = [](const std::string& a) { return std::to_string(std::strtoul(a.substr(a.find(':') + 1).c_str(), nullptr, 16)); };
            if (f[1].find(':') == std::string::npos) continue;
            by_inode[f[9]] = "port " + port(f[1]) + " -> " + port(f[2]) + " " + (st < 12 ? states[st] : "?");
        }
    }
    std::string s;
    for (const std::string& i : inodes) {
        if (std::find(before.begin(), before.end(), i) != before.end()) continue;
        auto it = by_inode.find(i);
        s += "  socket " + i + ": " + (it == by_inode.end() ? "not TCP" : it->second) + "\n";
    }
    return s;
}

class Sampler {
public:
    Sampler(pid_t pid, double interval) : thread_([this, pid, interval] {
        for (long i = 0; i < 100000000L && !stop_.load(); ++i) {
            Sample s = sample(pid);
            {
                std::lock_guard<std::mutex> lock(m_);
                samples_.push_back(s);
            }
            Deadline d(interval);
            while (!d.expired() && !stop_.load()) sleep_s(std::min(0.05, d.left()));
        }
    }) {}
    ~Sampler() { stop(); }
    void stop() {
        stop_.store(true);
        if (thread_.joinable()) thread_.join();
    }
    std::vector<Sample> samples() {
        std::lock_guard<std::mutex> lock(m_);
        return samples_;
    }

private:
    std::mutex m_;
    std::vector<Sample> samples_;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

// ------------------------------------------------------------------ main

struct Options {
    double seconds = 600;
    uint64_t seed = 1;
    std::string iawlb = "./iawlb";
    int clients = 8;
    int backends = 4;
    uint64_t max_mib = 32;
    double warmup = -1;      // default: a quarter of the run, at most 30 s
    double rss_slack_mib = -1;  // default: see main
};

[[noreturn]] void usage(int code) {
    std::fprintf(code ? stderr : stdout,
                 "usage: soak [--seconds N] [--seed S] [--iawlb PATH] [--clients K] [--backends N]\n"
                 "            [--max-mib M] [--warmup S] [--rss-slack-mib M]\n");
    std::exit(code);
}

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "-h" || a == "--help") usage(0);
        if (i + 1 >= argc) usage(2);
        std::string v = argv[++i];
        char* end = nullptr;
        double x = std::strtod(v.c_str(), &end);
        bool number = end && *end == '\0' && !v.empty();
        if (a == "--iawlb") o.iawlb = v;
        else if (!number) usage(2);
        else if (a == "--seconds" && x > 0) o.seconds = x;
        else if (a == "--seed" && x >= 0) o.seed = std::strtoull(v.c_str(), nullptr, 10);
        else if (a == "--clients" && x >= 1 && x <= 256) o.clients = static_cast<int>(x);
        else if (a == "--backends" && x >= 2 && x <= kMaxBackends) o.backends = static_cast<int>(x);
        else if (a == "--max-mib" && x >= 1 && x <= 1024) o.max_mib = static_cast<uint64_t>(x);
        else if (a == "--warmup" && x >= 0) o.warmup = x;
        else if (a == "--rss-slack-mib" && x >= 0) o.rss_slack_mib = x;
        else usage(2);
    }
    if (o.warmup < 0) o.warmup = std::min(30.0, o.seconds / 4);
    return o;
}

// Ports for the backends, below the kernel's ephemeral range, so that no program
// that asks the kernel for a free port is given one while its backend is down.
std::vector<uint16_t> backend_ports(int n) {
    unsigned lo = 32768, hi = 60999;
    std::istringstream(read_file("/proc/sys/net/ipv4/ip_local_port_range")) >> lo >> hi;
    unsigned from = lo > 12000 ? lo - 11000 : hi + 1, to = lo > 12000 ? lo - 1 : 65535;
    Rng r(mix(static_cast<uint64_t>(::getpid()), static_cast<uint64_t>(now() * 1e6)));
    std::vector<uint16_t> ports;
    for (int tries = 0; tries < 2000 && static_cast<int>(ports.size()) < n; ++tries) {
        auto p = static_cast<uint16_t>(r.range(from, to));
        if (std::find(ports.begin(), ports.end(), p) != ports.end()) continue;
        if (listen_socket(kLo, p, true, 1)) ports.push_back(p);  // free now (and closed again)
    }
    return ports;
}

}  // namespace

int main(int argc, char** argv) {
    Options o = parse(argc, argv);
    g_max_bytes = o.max_mib * MiB;

    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGINT, &sa, nullptr);
    ::sigaction(SIGTERM, &sa, nullptr);
    std::signal(SIGPIPE, SIG_IGN);
    raise_nofile_limit();

    // What the RSS may grow by after the warm-up. A plain build: at most two relay
    // buffers of 256 KiB for each of the K connections open at once, and 8 spare
    // buffers per worker, may first be touched after the warm-up (4 + 4 MiB for 8
    // clients and 2 workers), plus as much again for the allocator's fragmentation:
    // 16 MiB, or 1 MiB per client if that is more. A leak of 256 KiB per connection
    // passes it in seconds, one of a Connection record (a few hundred bytes) in a long
    // run. AddressSanitizer keeps freed memory in quarantine (up to 256 MiB) and
    // ThreadSanitizer grows its shadow and history memory: in this mix both grew by 1-3
    // MiB a minute, so they get 32 MiB and 6 MiB per minute of load. Their leak check at
    // exit (LeakSanitizer) and race reports are what counts there.
    double slack_mib = o.rss_slack_mib >= 0 ? o.rss_slack_mib
                       : kSanitizer        ? 32.0 + 6.0 * o.seconds / 60.0
                                           : std::max(16.0, 1.0 * o.clients);

    if (::access(o.iawlb.c_str(), X_OK) != 0) {
        say("cannot run " + o.iawlb);
        say("FAIL (no balancer binary)");
        return 1;
    }
    std::vector<uint16_t> bports = backend_ports(o.backends);
    std::vector<uint16_t> ports = free_ports(2);
    if (static_cast<int>(bports.size()) != o.backends || ports.size() != 2) {
        say("FAIL (no free ports)");
        return 1;
    }
    g_lb_port = ports[0];
    uint16_t stats_port = ports[1];

    std::vector<std::unique_ptr<SoakBackend>> backends;
    for (int i = 0; i < o.backends; ++i) {
        backends.push_back(std::make_unique<SoakBackend>(i, bports[static_cast<size_t>(i)]));
        int err = 0;
        if (!backends.back()->start(&err)) {
            say("backend " + backends.back()->name() + ": cannot listen on " + std::to_string(bports[static_cast<size_t>(i)]) + ": " + std::strerror(err));
            say("FAIL (backends)");
            return 1;
        }
    }

    const std::string grace = "10s";
    std::vector<std::string> argv_lb = {o.iawlb, "-w", std::to_string(kWorkers), "--idle-timeout", "2m", "--backoff-max", "500ms",
                                        "--check-interval", "500ms", "--grace", grace, "--send-proxy",
                                        "--stats", host_port(kLo, stats_port), host_port(kLo, g_lb_port)};
    for (auto& b : backends) argv_lb.push_back(host_port(kLo, b->port()));
    auto lb = std::make_unique<Process>(argv_lb);
    std::string cmd = lb->command();
    // A failure counted here makes the Process print the balancer's output when it
    // goes, and keep its log file.
    auto fail_early = [&](const std::string& why) {
        failure_count().fetch_add(1);
        say("FAIL (" + why + ")");
        return 1;
    };
    if (!lb->started()) return fail_early("cannot start the balancer: " + lb->spawn_error());
    if (!lb->wait_for_log("listening on", 15.0 * kSlow)) return fail_early("the balancer did not start");
    pid_t pid = lb->pid();

    say("seed " + std::to_string(o.seed) + ", " + std::to_string(static_cast<long>(o.seconds)) + " s, " +
        std::to_string(o.clients) + " clients, " + std::to_string(o.backends) + " backends, sizes up to " +
        std::to_string(o.max_mib) + " MiB, " + kBuildName + " build");
    say("balancer (pid " + std::to_string(pid) + "): " + cmd);

    Sample idle = quiet_sample(pid);
    std::vector<std::string> idle_sockets = socket_inodes(pid);
    Sampler sampler(pid, 2.0);

    std::atomic<bool> stop_load{false};
    std::atomic<int> clients_done{0};
    std::vector<std::thread> clients;
    for (int i = 0; i < o.clients; ++i)
        clients.emplace_back([&, i] {
            Client c(i, o.seed);
            c.run(stop_load);
            clients_done++;
        });

    // The chaos, on the main thread, which owns the backends.
    const double t_start = now(), t_end = t_start + o.seconds;
    Rng chaos(mix(o.seed, 0xC4A05));
    long kills = 0, kills_reset = 0, restarts = 0, restart_failures = 0;
    double next_action = now() + chaos.uniform(0.5, 2.0);
    double progress_every = std::max(10.0, std::min(60.0, o.seconds / 6)), next_progress = t_start + progress_every;
    bool died = false;  // the balancer, during the load
    for (long iter = 0; iter < 100000000L && now() < t_end && !g_interrupted.load(); ++iter) {
        nap(std::min(0.05, std::max(0.0, t_end - now())));
        double t = now();
        if (iter % 20 == 0 && !lb->running()) {
            died = true;
            say("the balancer died: " + lb->status().str());
            break;
        }
        if (t >= next_progress) {
            next_progress += progress_every;
            Sample s = sample(pid);
            say(std::to_string(static_cast<long>(t - t_start)) + " s: " + std::to_string(g_totals.connections.load()) +
                " connections, " + human(g_totals.up_sent + g_totals.down_got) + " moved, " + std::to_string(kills) +
                " kills, " + std::to_string(g_totals.unexplained + g_totals.corrupt_sessions) + " failures; balancer " +
                std::to_string(s.fds) + " fds, " + std::to_string(s.threads) + " threads, " +
                std::to_string(s.rss_kb / 1024) + " MiB");
        }
        if (t < next_action) continue;
        next_action = t + chaos.uniform(0.3, 2.5);
        std::vector<SoakBackend*> up, down;
        for (auto& b : backends) (b->alive() ? up : down).push_back(b.get());
        bool restart = !down.empty() && (up.size() <= 1 || chaos.chance(0.5));
        if (restart) {
            SoakBackend* b = down[chaos.below(down.size())];
            if (t - b->killed_at() < 0.2) continue;
            int err = 0;
            if (b->start(&err)) restarts++;
            else if (restart_failures++ < 5) say("backend " + b->name() + " cannot restart: " + std::strerror(err));
        } else if (up.size() >= 2) {  // never the last one: a healthy destination always exists
            SoakBackend* b = up[chaos.below(up.size())];
            bool reset = chaos.chance(0.75);
            b->kill(reset);
            kills++;
            kills_reset += reset;
        }
    }
    const double t_load_end = now();

    // The end: no new sessions; every backend back, so that the last sessions finish.
    stop_load.store(true);
    for (auto& b : backends) {
        int err = 0;
        for (int i = 0; i < 20 && !b->alive() && !b->start(&err); ++i) sleep_s(0.1);
        if (b->alive()) continue;
        restart_failures++;
        say("backend " + b->name() + " cannot restart: " + std::strerror(err));
    }
    std::vector<std::string> failures;
    double stop_wait = 120.0 * kSlow;
    if (!wait_until([&] { return g_interrupted.load() || clients_done.load() == o.clients; }, stop_wait, 0.05)) {
        failures.push_back("clients still busy " + std::to_string(static_cast<int>(stop_wait)) + " s after the end");
        g_interrupted.store(true);  // ends their sessions now
    }
    for (auto& c : clients) c.join();
    const double t_clients_done = now();

    // The balancer's connections drain.
    long long active = -1, accepted = -1;
    std::string m;
    if (!died) died = !lb->running();
    bool drained = died || wait_until([&] {
        m = http_get(stats_port, "/metrics");
        active = metric(m, "iawlb_active_connections");
        return active == 0 || g_interrupted.load();
    }, 30.0 * kSlow, 0.2);
    accepted = metric(m, "iawlb_accepted_connections_total");
    if (!drained) failures.push_back("the balancer still had " + std::to_string(active) + " connections 30 s after the load");
    Sample end = quiet_sample(pid);
    std::string new_sockets = end.sockets > idle.sockets ? describe_sockets(socket_inodes(pid), idle_sockets) : "";
    sampler.stop();
    std::vector<Sample> samples = sampler.samples();

    // SIGTERM: out within the grace, status 0, and nothing from a sanitizer.
    double t_term = now();
    lb->send_signal(SIGTERM);
    ExitStatus st = lb->wait_exit(10.0 + 5.0 * kSlow);
    double exit_s = now() - t_term;
    if (died) {
        failures.push_back("the balancer died during the load: " + st.str());
    } else if (!st.finished) {
        failures.push_back("the balancer did not exit within its grace after SIGTERM");
        lb->kill_now();
    } else if (!st.ok()) {
        failures.push_back("the balancer ended with " + st.str() + " after SIGTERM");
    }
    std::string log = lb->log();
    std::string report = sanitizer_report(log);
    for (auto& b : backends) b->kill(true);

    // The numbers.
    const Totals& T = g_totals;
    uint64_t sessions = 0;
    std::string by_kind;
    for (int k = 0; k < kKinds; ++k) {
        sessions += T.sessions[k];
        by_kind += std::string(k ? ", " : "") + kKindNames[k] + " " + std::to_string(T.sessions[k].load());
    }
    Sample warm, peak;  // after the warm-up: the first sample, and the largest values
    bool have_warm = false;
    long rss_base = -1;
    long threads_min = idle.threads, threads_max = idle.threads;
    for (const Sample& s : samples) {
        if (s.fds < 0 || s.threads < 0 || s.rss_kb < 0) continue;
        threads_min = std::min(threads_min, s.threads);  // the same from the start to the end
        threads_max = std::max(threads_max, s.threads);
        bool after = s.t >= t_start + o.warmup;
        if (!after || !have_warm) rss_base = std::max(rss_base, s.rss_kb);  // the highest until the warm-up ends
        if (!after) continue;
        if (!have_warm) warm = s, peak = s, have_warm = true;
        peak.fds = std::max(peak.fds, s.fds);
        peak.rss_kb = std::max(peak.rss_kb, s.rss_kb);
    }
    if (!have_warm) warm = peak = end, rss_base = std::max(rss_base, end.rss_kb);

    auto line = [&](const std::string& s) { say(s); };
    line("---------------------------------------------------------------- report");
    line("duration " + std::to_string(static_cast<long>(t_load_end - t_start)) + " s of load (" +
         std::to_string(static_cast<long>(t_clients_done - t_load_end)) + " s to finish the last sessions), seed " +
         std::to_string(o.seed) + ", " + kBuildName + " build, " + std::to_string(o.clients) + " clients, " +
         std::to_string(o.backends) + " backends");
    line("sessions " + std::to_string(sessions) + ": " + by_kind);
    line("connections made " + std::to_string(T.connections.load()) + " (the balancer counted " +
         std::to_string(accepted) + " accepted)");
    line("bytes up   " + human(T.up_sent) + " sent, " + human(T.up_verified) + " verified by the backends");
    line("bytes down " + human(T.down_got) + " received, " + human(T.down_verified) + " verified");
    line("corrupted bytes " + std::to_string(T.corrupt_bytes.load()) + " (in " + std::to_string(T.corrupt_sessions.load()) +
         " sessions), lost bytes " + std::to_string(T.lost_bytes.load()) + " (in " + std::to_string(T.lost_sessions.load()) + " sessions)");
    line("errors while a healthy destination existed: " + std::to_string(T.unexplained.load()));
    line("sessions cut by a backend kill: " + std::to_string(T.cut_claimed + T.cut_unclaimed) + " (" +
         std::to_string(T.cut_claimed.load()) + " while their backend served them, " + std::to_string(T.cut_unclaimed.load()) +
         " before one took them); sessions fine: " + std::to_string(T.ok.load()) + ", stopped by an interrupt: " +
         std::to_string(T.aborted.load()));
    line("checked: " + std::to_string(T.client_half_closes.load()) + " client half-closes, " +
         std::to_string(T.server_half_closes.load()) + " server half-closes, " + std::to_string(T.client_resets.load()) +
         " client resets (" + std::to_string(T.resets_seen.load()) + " seen as resets by the backend), " +
         std::to_string(T.stalls.load()) + " stalled readers, " + std::to_string(T.greetings.load()) + " greetings");
    std::string served;
    for (int i = 0; i < o.backends; ++i) served += (i ? ", " : "") + backends[static_cast<size_t>(i)]->name() + " " + std::to_string(T.served[i].load());
    line("backend kills " + std::to_string(kills) + " (" + std::to_string(kills_reset) + " with resets, " +
         std::to_string(kills - kills_reset) + " with FIN), restarts " + std::to_string(restarts) + " (" +
         std::to_string(restart_failures) + " failed); sessions served: " + served + "; health checks " +
         std::to_string(T.probes.load()));
    if (T.bad_headers || T.unknown_ports || T.duplicate_claims || T.backend_refused)
        line("backend oddities: " + std::to_string(T.bad_headers.load()) + " bad PROXY headers, " +
             std::to_string(T.unknown_ports.load()) + " unknown client ports, " + std::to_string(T.duplicate_claims.load()) +
             " second connections for a session, " + std::to_string(T.backend_refused.load()) + " refused");
    // Descriptors at the end: the sockets of before the load (a health-check probe
    // may hold one more for a moment, and quiet_sample looks for a moment without);
    // the pipes of before (one may be inherited) and those that the workers keep spare
    // for bulk streams (the book's PipePool: at most spare_max = 8 per worker, two
    // descriptors each; pipes lost with their connections would push the count up to
    // the pipe budget, 32 per worker); and exactly the other descriptors of before
    // (listeners, epoll, eventfds, the log).
    const int socket_slack = 1, pipe_max = 2 * kSparePipes * kWorkers;
    auto fds = [](const Sample& s) {
        return std::to_string(s.fds) + " (" + std::to_string(s.sockets) + " sockets, " + std::to_string(s.pipes) +
               " pipe ends, " + std::to_string(s.other()) + " other)";
    };
    line("balancer fds:     before the load " + fds(idle) + ", after the warm-up " + fds(warm));
    line("                  max " + std::to_string(peak.fds) + ", end " + fds(end) + "; allowed at the end: <= " +
         std::to_string(idle.sockets + socket_slack) + " sockets, <= " + std::to_string(idle.pipes + pipe_max) + " pipe ends, " +
         std::to_string(idle.other()) + " other");
    line("balancer threads: before the load " + std::to_string(idle.threads) + ", after the warm-up " + std::to_string(warm.threads) +
         ", all samples " + std::to_string(threads_min) + "-" + std::to_string(threads_max) + ", end " + std::to_string(end.threads));
    char rss[256];
    std::snprintf(rss, sizeof rss,
                  "balancer RSS:     before the load %.1f MiB, at the warm-up %.1f MiB, max %.1f MiB, end %.1f MiB "
                  "(allowed: max <= %.1f MiB)",
                  idle.rss_kb / 1024.0, rss_base / 1024.0, peak.rss_kb / 1024.0, end.rss_kb / 1024.0,
                  rss_base / 1024.0 + slack_mib);
    line(rss);
    line("balancer exit after SIGTERM: " + st.str() + " in " + std::to_string(exit_s).substr(0, 4) + " s");

    if (g_signal) failures.insert(failures.begin(), std::string("interrupted by signal ") + std::to_string(g_signal));
    if (T.corrupt_bytes || T.corrupt_sessions) failures.push_back(std::to_string(T.corrupt_sessions.load()) + " sessions with corrupted bytes");
    if (T.lost_bytes || T.lost_sessions) failures.push_back(std::to_string(T.lost_bytes.load()) + " bytes lost");
    if (T.unexplained) failures.push_back(std::to_string(T.unexplained.load()) + " errors while a healthy destination existed");
    if (T.bad_headers || T.duplicate_claims) failures.push_back("bad PROXY headers or second connections");
    if (accepted >= 0 && static_cast<uint64_t>(accepted) != T.connections.load())
        failures.push_back("the balancer accepted " + std::to_string(accepted) + " connections, the clients made " + std::to_string(T.connections.load()));
    if (accepted < 0) failures.push_back("no statistics from the balancer");
    if (restart_failures) failures.push_back("backends that could not restart");
    if (end.fds < 0 || end.sockets > idle.sockets + socket_slack || end.pipes > idle.pipes + pipe_max || end.other() != idle.other())
        failures.push_back("descriptors: " + fds(idle) + " before the load, " + fds(end) + " after it");
    if (!new_sockets.empty()) say("the balancer's sockets that were not there before the load:\n" + new_sockets);
    if (threads_min != idle.threads || threads_max != idle.threads || end.threads != idle.threads) failures.push_back("the number of threads changed");
    if (peak.rss_kb > rss_base + static_cast<long>(slack_mib * 1024) || end.rss_kb > rss_base + static_cast<long>(slack_mib * 1024))
        failures.push_back("RSS grew by more than " + std::to_string(static_cast<int>(slack_mib)) + " MiB after the warm-up");
    if (!report.empty()) failures.push_back("a sanitizer report in the balancer's log");
    if (sessions == 0) failures.push_back("no sessions");

    if (!report.empty()) {
        say("sanitizer report:");
        std::cout << report << "\n";
    }
    if (!failures.empty()) {
        failure_count().fetch_add(1);
        std::cout.flush();
        lb.reset();  // prints the balancer's output (the failure below is counted first)
        std::cerr.flush();
        std::string all;
        for (auto& f : failures) all += (all.empty() ? "" : "; ") + f;
        say("FAIL (" + all + ")");
        return 1;
    }
    say("PASS");
    return 0;
}
