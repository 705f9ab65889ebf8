// libFuzzer target: iawlb's whole command line, parse_args.
//
// The input is split into arguments at each NUL and each newline byte (so a
// corpus file is one argument per line; a separator ends an argument, so a
// final newline adds none), at most max_args of them; "iawlb" is put in
// front, and argv[argc] is a null pointer, as for main.
//
// parse_args must either return a Config or throw UsageError; anything else
// escaping is a bug. Checked beyond that:
//  - a UsageError's message is one line with no control character (they are
//    escaped, see printable in the book) and names the argument at fault: it contains an argument, an option's
//    name or an option's value in quotes ('...'), or "option NAME:", or it is
//    one of the messages that have nothing to quote (no places at all;
//    the two PROXY options together; --accept-proxy and --trusted, each
//    without the other);
//  - a returned Config keeps the ranges of the README (a port from 1 to
//    65535, at least one destination, weights 1 to 256, workers 1 to 1024,
//    positive connect and queue timeouts, no negative duration, ...);
//  - whether parse_args accepts, and the Config it returns, agree with a
//    model of the command line written below from the README and the book's
//    rules (an argument that starts with '-' and is longer than one character
//    is an option, anything else a place, "--" ends the options; a value is
//    the next argument, follows '=', or is glued to a short option); the
//    model reads each value with iawlb's own parse_count, parse_duration,
//    parse_endpoint, parse_dest and parse_stats_endpoint, which fuzz_endpoint
//    checks against the README's forms;
//  - the Config written back as a command line (long options with '=', the
//    durations by format_duration, then "--" and the places) parses to the
//    same Config;
//  - parse_args prints nothing, never exits and touches no file, socket or
//    signal: every such call from iawlb's code traps (see fuzz.hpp), and
//    libFuzzer also reports a target that exits.
//
// --help and --version: parse_args does not print or exit for them; it sets
// Config::help or Config::version and returns at once, without looking at
// the arguments after it or checking the places (main prints the text and
// exits 0). So nothing needs to be filtered out: such a Config is compared
// with the model, which also stops there, and the destination checks are
// skipped for it, since it may have none.
#include "iawlb.hpp"
#include "fuzz.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

namespace {

constexpr std::size_t max_args = 48;

// ------------------------------------------------------------ the model

// The long name of an option, from either spelling; empty if unknown.
std::string long_name(std::string_view name)
{
    struct Alias {
        const char *brief, *full;
    };
    static const Alias aliases[] = {{"-w", "--workers"}, {"-c", "--max-conn"}, {"-a", "--algorithm"},
                                    {"-v", "--verbose"}, {"-h", "--help"},     {"-V", "--version"}};
    static const char *const long_only[] = {
        "--connect-timeout", "--idle-timeout", "--queue-timeout", "--grace",        "--backoff-max",
        "--check-interval",  "--rise",         "--fall",          "--queue-max",    "--stats",
        "--send-proxy",      "--send-proxy-v2", "--reuseport",    "--workers",      "--max-conn",
        "--algorithm",       "--verbose",       "--help",         "--version",      "--slow-start",
        "--allow",           "--deny",          "--backup",       "--dest-max-conn",
        "--accept-proxy",    "--trusted",       "--preread-timeout"};
    for (const Alias &x : aliases)
        if (name == x.brief) return x.full;
    for (const char *x : long_only)
        if (name == x) return x;
    return "";
}

bool is_flag(const std::string &n)
{
    return n == "--help" || n == "--version" || n == "--verbose" || n == "--send-proxy"
           || n == "--send-proxy-v2" || n == "--reuseport" || n == "--accept-proxy";
}

// Sets option n to v, throwing std::invalid_argument or UsageError when the
// value is not allowed.
void set_option(Config &c, const std::string &n, std::string_view v)
{
    auto duration = [&](bool zero_ok) {
        Time t = parse_duration(v);
        if (t == 0 && !zero_ok) throw std::invalid_argument("zero");
        return t;
    };
    if (n == "--workers") c.workers = unsigned(parse_count(v, 1, 1024));
    else if (n == "--max-conn") c.max_conn = parse_count(v, 1, 100000000);
    else if (n == "--algorithm") {
        if (v == "leastconn") c.algorithm = Algorithm::leastconn;
        else if (v == "roundrobin") c.algorithm = Algorithm::roundrobin;
        else if (v == "source") c.algorithm = Algorithm::source;
        else throw std::invalid_argument("algorithm");
    }
    else if (n == "--connect-timeout") c.connect_timeout = duration(false);
    else if (n == "--idle-timeout") c.idle_timeout = duration(true);
    else if (n == "--queue-timeout") c.queue_timeout = duration(false);
    else if (n == "--grace") c.grace = duration(true);
    else if (n == "--backoff-max") c.backoff_max = duration(false);
    else if (n == "--check-interval") c.check_interval = duration(true);
    else if (n == "--rise") c.rise = unsigned(parse_count(v, 1, 1000));
    else if (n == "--fall") c.fall = unsigned(parse_count(v, 1, 1000));
    else if (n == "--queue-max") c.queue_max = parse_count(v, 0, 100000000);
    else if (n == "--dest-max-conn") c.dest_max_conn = unsigned(parse_count(v, 0, 100000000));
    else if (n == "--stats") c.stats = parse_stats_endpoint(v);
    else if (n == "--slow-start") c.slow_start = duration(true);
    else if (n == "--allow" || n == "--deny") c.acl.push_back(parse_acl_rule(n, v));
    else if (n == "--trusted") c.trusted.push_back(parse_acl_rule(n, v));
    else if (n == "--preread-timeout") c.preread_timeout = duration(false);
    else if (n == "--backup") {
        c.dests.push_back(parse_dest(v));  // moved after the places below
        c.dests.back().backup = true;
    }
    else fuzz_fail("model: no option " + n);
}

// The Config that the arguments mean, or nothing if they are malformed.
std::optional<Config> model(const std::vector<std::string> &args)
{
    Config c;
    std::vector<std::string_view> places;
    bool options_done = false;
    for (std::size_t i = 0; i < args.size(); ++i) {
        std::string_view a = args[i];
        if (options_done || a.size() < 2 || a[0] != '-') {
            places.push_back(a);
            continue;
        }
        if (a == "--") {
            options_done = true;
            continue;
        }
        std::string_view name = a, value;
        bool glued = false;
        if (a[1] != '-' && a.size() > 2) {
            name = a.substr(0, 2);
            value = a.substr(2);
            glued = true;
        } else if (a[1] == '-' && a.find('=') != std::string_view::npos) {
            name = a.substr(0, a.find('='));
            value = a.substr(a.find('=') + 1);
            glued = true;
        }
        std::string n = long_name(name);
        if (n.empty()) return std::nullopt;
        if (is_flag(n)) {
            if (glued) return std::nullopt;
            if (n == "--help" || n == "--version") {
                (n == "--help" ? c.help : c.version) = true;
                return c;
            }
            if (n == "--verbose") c.verbose = true;
            else if (n == "--reuseport") c.reuseport = true;
            else if (n == "--accept-proxy") c.accept_proxy = true;
            else {
                Proxy p = n == "--send-proxy" ? Proxy::v1 : Proxy::v2;
                if (c.proxy != Proxy::none && c.proxy != p) return std::nullopt;
                c.proxy = p;
            }
            continue;
        }
        if (!glued) {
            if (i + 1 >= args.size()) return std::nullopt;
            value = args[++i];
        }
        try {
            set_option(c, n, value);
        } catch (const std::invalid_argument &) {
            return std::nullopt;
        } catch (const UsageError &) {
            return std::nullopt;
        }
    }
    if (places.size() < 2) return std::nullopt;
    if (c.accept_proxy != !c.trusted.empty()) return std::nullopt;  // each needs the other
    try {
        c.listen = parse_endpoint(places[0], "listen address");
        std::vector<Endpoint> backups = std::move(c.dests);
        c.dests.clear();
        for (std::size_t i = 1; i < places.size(); ++i) c.dests.push_back(parse_dest(places[i]));
        c.dests.insert(c.dests.end(), backups.begin(), backups.end());
    } catch (const UsageError &) {
        return std::nullopt;
    }
    return c;
}

// ------------------------------------------------------------ checking

bool same(const Endpoint &a, const Endpoint &b)
{
    return a.text == b.text && a.host == b.host && a.port == b.port && a.weight == b.weight && a.backup == b.backup;
}

// The first field in which two Configs differ, or nothing.
const char *difference(const Config &a, const Config &b)
{
    if (!same(a.listen, b.listen)) return "listen";
    if (a.dests.size() != b.dests.size()) return "the number of dests";
    for (std::size_t i = 0; i < a.dests.size(); ++i)
        if (!same(a.dests[i], b.dests[i])) return "a dest";
    if (a.workers != b.workers) return "workers";
    if (a.max_conn != b.max_conn) return "max_conn";
    if (a.algorithm != b.algorithm) return "algorithm";
    if (a.connect_timeout != b.connect_timeout) return "connect_timeout";
    if (a.idle_timeout != b.idle_timeout) return "idle_timeout";
    if (a.queue_timeout != b.queue_timeout) return "queue_timeout";
    if (a.grace != b.grace) return "grace";
    if (a.backoff_max != b.backoff_max) return "backoff_max";
    if (a.check_interval != b.check_interval) return "check_interval";
    if (a.rise != b.rise) return "rise";
    if (a.fall != b.fall) return "fall";
    if (a.queue_max != b.queue_max) return "queue_max";
    if (a.dest_max_conn != b.dest_max_conn) return "dest_max_conn";
    if (bool(a.stats) != bool(b.stats)) return "stats (set or not)";
    if (a.stats && !same(*a.stats, *b.stats)) return "stats";
    if (a.proxy != b.proxy) return "proxy";
    if (a.reuseport != b.reuseport) return "reuseport";
    if (a.accept_proxy != b.accept_proxy) return "accept_proxy";
    if (a.trusted.size() != b.trusted.size()) return "the number of trusted networks";
    for (std::size_t i = 0; i < a.trusted.size(); ++i)
        if (a.trusted[i].family != b.trusted[i].family || a.trusted[i].bits != b.trusted[i].bits
            || std::memcmp(a.trusted[i].net, b.trusted[i].net, 16) != 0 || !a.trusted[i].allow)
            return "a trusted network";
    if (a.preread_timeout != b.preread_timeout) return "preread_timeout";
    if (a.verbose != b.verbose) return "verbose";
    if (a.help != b.help) return "help";
    if (a.version != b.version) return "version";
    return nullptr;
}

std::string show_args(const std::vector<std::string> &args)
{
    std::string s = "iawlb";
    for (const std::string &a : args) s += " " + fuzz_show(a);
    return s;
}

std::optional<Config> parse(const std::vector<std::string> &args, std::string *error)
{
    std::vector<const char *> argv = {"iawlb"};
    for (const std::string &a : args) argv.push_back(a.c_str());
    argv.push_back(nullptr);
    try {
        return parse_args(int(argv.size() - 1), argv.data());
    } catch (const UsageError &x) {
        *error = x.what();
        return std::nullopt;
    } catch (const std::exception &x) {
        fuzz_fail(std::string("parse_args threw ") + typeid(x).name() + " (" + fuzz_show(x.what())
                  + "), not UsageError, for " + show_args(args));
    } catch (...) {
        fuzz_fail("parse_args threw a non-exception for " + show_args(args));
    }
}

bool contains(const std::string &m, const std::string &part)
{
    return m.find(part) != std::string::npos;
}

// The message names an argument, an option or a value: see the top.
bool names_an_argument(const std::string &m, const std::vector<std::string> &args)
{
    if (m == "missing LISTEN and DEST arguments"
        || m == "options --send-proxy and --send-proxy-v2 exclude each other"
        || m == "option --accept-proxy needs --trusted CIDR, the proxies that may send the header"
        || m == "option --trusted is for --accept-proxy, which is not given")
        return true;
    for (const std::string &a : args) {
        std::vector<std::string> parts = {a, a.substr(0, a.find('@'))};
        if (a.size() >= 2 && a[0] == '-') {
            parts.push_back(a.substr(0, 2));
            parts.push_back(a.substr(2));
            parts.push_back(a.substr(0, a.find('=')));
            if (a.find('=') != std::string::npos) parts.push_back(a.substr(a.find('=') + 1));
        }
        for (const std::string &p : parts) {
            const std::string q = printable(p);  // as the messages quote it
            if (contains(m, "'" + q + "'") || (!q.empty() && contains(m, "option " + q + ":")))
                return true;
        }
    }
    return false;
}

void check_ranges(const Config &c, const std::vector<std::string> &args)
{
    auto fail = [&](const char *what) {
        fuzz_fail(std::string("parse_args returned ") + what + " for " + show_args(args));
    };
    if (c.help && c.version) fail("both help and version");
    if (c.workers > 1024) fail("more than 1024 workers");
    if (c.max_conn > 100000000) fail("a max_conn over 100000000");
    if (c.queue_max > 100000000) fail("a queue_max over 100000000");
    if (c.dest_max_conn > 100000000) fail("a dest_max_conn over 100000000");
    if (c.rise < 1 || c.rise > 1000 || c.fall < 1 || c.fall > 1000) fail("rise or fall out of 1..1000");
    if (c.connect_timeout <= 0 || c.queue_timeout <= 0 || c.backoff_max <= 0 || c.preread_timeout <= 0)
        fail("a connect or queue timeout or backoff_max that is not positive");
    if (c.idle_timeout < 0 || c.grace < 0 || c.check_interval < 0) fail("a negative duration");
    if (c.algorithm != Algorithm::leastconn && c.algorithm != Algorithm::roundrobin && c.algorithm != Algorithm::source)
        fail("an unknown algorithm");
    if (c.proxy != Proxy::none && c.proxy != Proxy::v1 && c.proxy != Proxy::v2)
        fail("an unknown PROXY version");
    if (c.stats && (c.stats->host.empty() || c.stats->port < 1)) fail("a stats address without host or port");
    if (c.help || c.version) return;
    // Checked with the places, so after --help or --version the parse stops before it.
    if (c.accept_proxy != !c.trusted.empty()) fail("--accept-proxy without --trusted, or the reverse");
    if (c.listen.port < 1) fail("a listen port of 0");
    if (c.dests.empty()) fail("no destination");
    for (const Endpoint &d : c.dests)
        if (d.port < 1 || d.weight < 1 || d.weight > 256) fail("a destination port of 0 or a weight out of 1..256");
}

// The Config as a command line, in the long and explicit forms.
std::vector<std::string> written(const Config &c)
{
    std::vector<std::string> w;
    if (c.workers) w.push_back("--workers=" + std::to_string(c.workers));
    if (c.max_conn) w.push_back("--max-conn=" + std::to_string(c.max_conn));
    w.push_back("--dest-max-conn=" + std::to_string(c.dest_max_conn));
    w.push_back(std::string("--algorithm=")
                + (c.algorithm == Algorithm::roundrobin ? "roundrobin"
                   : c.algorithm == Algorithm::source   ? "source"
                                                        : "leastconn"));
    w.push_back("--slow-start=" + format_duration(c.slow_start));
    w.push_back("--connect-timeout=" + format_duration(c.connect_timeout));
    w.push_back("--idle-timeout=" + format_duration(c.idle_timeout));
    w.push_back("--queue-timeout=" + format_duration(c.queue_timeout));
    w.push_back("--grace=" + format_duration(c.grace));
    w.push_back("--backoff-max=" + format_duration(c.backoff_max));
    w.push_back("--check-interval=" + format_duration(c.check_interval));
    w.push_back("--rise=" + std::to_string(c.rise));
    w.push_back("--fall=" + std::to_string(c.fall));
    w.push_back("--queue-max=" + std::to_string(c.queue_max));
    if (c.stats) w.push_back("--stats=" + c.stats->text);
    if (c.proxy == Proxy::v1) w.push_back("--send-proxy");
    if (c.proxy == Proxy::v2) w.push_back("--send-proxy-v2");
    if (c.reuseport) w.push_back("--reuseport");
    if (c.accept_proxy) w.push_back("--accept-proxy");
    for (const AclRule &r : c.trusted) {
        char text[INET6_ADDRSTRLEN] = "";
        inet_ntop(r.family, r.net, text, sizeof text);
        w.push_back("--trusted=" + std::string(text) + "/" + std::to_string(r.bits));
    }
    w.push_back("--preread-timeout=" + format_duration(c.preread_timeout));
    if (c.verbose) w.push_back("--verbose");
    for (const Endpoint &d : c.dests)
        if (d.backup) w.push_back("--backup=" + d.text);
    w.push_back("--");
    w.push_back(c.listen.text);
    for (const Endpoint &d : c.dests)
        if (!d.backup) w.push_back(d.text);
    return w;
}

// The defaults of the README's table, which the model takes from Config.
void check_defaults()
{
    Config c;
    if (c.workers != 0 || c.max_conn != 0 || c.algorithm != Algorithm::leastconn
        || c.connect_timeout != 3 * sec || c.idle_timeout != 300 * sec || c.queue_timeout != 10 * sec
        || c.grace != 30 * sec || c.backoff_max != 5 * sec || c.check_interval != 0 || c.rise != 2
        || c.fall != 3 || c.queue_max != 0 || c.stats || c.proxy != Proxy::none || c.reuseport
        || c.accept_proxy || !c.trusted.empty() || c.preread_timeout != 5 * sec
        || c.verbose || c.help || c.version)
        fuzz_fail("Config's defaults are not the README's");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***)
{
    check_defaults();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size)
{
    std::vector<std::string> args;
    std::string arg;
    bool open = false;  // bytes since the last separator
    for (std::size_t i = 0; i < size && args.size() < max_args; ++i) {
        char ch = char(data[i]);
        if (ch == '\0' || ch == '\n') {
            args.push_back(arg);
            arg.clear();
            open = false;
        } else {
            arg += ch;
            open = true;
        }
    }
    if (open && args.size() < max_args) args.push_back(arg);

    std::string error;
    std::optional<Config> got = parse(args, &error);
    std::optional<Config> want = model(args);
    if (!got) {
        if (want)
            fuzz_fail("parse_args refused " + show_args(args) + " (" + error
                      + "), which the model accepts");
        if (error.empty() || std::any_of(error.begin(), error.end(), [](char ch) {
                return static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f;
            }))
            fuzz_fail("parse_args: message " + fuzz_show(error) + " for " + show_args(args)
                      + " is not one non-empty printable line");
        if (!names_an_argument(error, args))
            fuzz_fail("parse_args: message " + fuzz_show(error) + " names no argument of "
                      + show_args(args));
        return 0;
    }
    if (!want) fuzz_fail("parse_args accepted " + show_args(args) + ", which the model refuses");
    if (const char *d = difference(*got, *want))
        fuzz_fail(std::string("parse_args and the model differ in ") + d + " for " + show_args(args));
    check_ranges(*got, args);
    if (got->help || got->version) return 0;

    std::vector<std::string> again = written(*got);
    std::string error2;
    std::optional<Config> back = parse(again, &error2);
    if (!back)
        fuzz_fail("parse_args accepted " + show_args(args) + " but not its written form "
                  + show_args(again) + ": " + error2);
    if (const char *d = difference(*got, *back))
        fuzz_fail(std::string("parse_args: ") + show_args(args) + " and its written form "
                  + show_args(again) + " differ in " + d);
    return 0;
}
