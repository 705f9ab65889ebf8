// libFuzzer target: iawlb's parsers of one argument. The input, all of its
// bytes (NULs and newlines included), is one argument given to each parser:
//   split_host_port by way of get_addr and get_port, parse_port,
//   parse_endpoint (as a listen address or as a destination), parse_dest
//   (HOST:PORT@WEIGHT), parse_stats_endpoint, parse_duration and
//   format_duration, parse_count with the ranges the options use;
// and, when the input has at least 19 bytes, its first 19 are an address
// given to addr_to_string, whose text parse_endpoint must read back.
//
// Beyond "no crash", each result is checked against the forms of the README
// ("PORT, HOST:PORT or [IPv6]:PORT, optionally followed by @WEIGHT (1 to
// 256)"; durations "250ms, 3s, 2m, 1h, or a number of seconds"), written out
// again below from that text rather than from iawlb.w:
//  - what is accepted is exactly what the forms allow, with the same parts;
//  - an accepted endpoint has a port from 1 to 65535, keeps the argument as
//    its text, and, written back in the documented form and parsed again,
//    gives the same host, port and weight; a duration written back by
//    format_duration parses to the same time;
//  - a rejection by parse_endpoint, parse_dest or parse_stats_endpoint is a
//    UsageError whose message is "bad WHAT 'ARG': REASON" with a non-empty
//    REASON, on one line; the helpers below them (parse_port,
//    split_host_port, parse_duration, parse_count) throw
//    std::invalid_argument with a non-empty message; any other exception is
//    a bug.
//
// One line: the messages quote the argument with its control characters
// escaped (printable), so no message holds a byte below 0x20 or 0x7f, and
// the quoted argument is printable(ARG). An earlier version quoted it as
// typed, and a single newline gave a message of two lines
// (tests/fuzz/regressions/endpoint-newline-in-message).
#include "iawlb.hpp"
#include "fuzz.hpp"

#include <arpa/inet.h>
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <typeinfo>

namespace {


constexpr std::string_view digits = "0123456789";

bool all_digits(std::string_view s)
{
    return s.find_first_not_of(digits) == std::string_view::npos;
}

// A number of at most nine digits, as the README's counts, weights and ports
// are written: a value, or nothing if it is not such a number.
std::optional<std::uint64_t> small_number(std::string_view s, std::size_t max_digits)
{
    if (s.empty() || s.size() > max_digits || !all_digits(s)) return std::nullopt;
    std::uint64_t v = 0;
    for (char c : s) v = v * 10 + std::uint64_t(c - '0');
    return v;
}

// ------------------------------------------------------------ the forms

struct Parts {
    std::string host;  // without brackets, empty when absent
    std::uint16_t port = 0;
};

std::optional<std::uint16_t> expected_port(std::string_view s)
{
    std::optional<std::uint64_t> v = small_number(s, 5);
    if (!v || *v < 1 || *v > 65535) return std::nullopt;
    return std::uint16_t(*v);
}

// PORT, HOST:PORT, or [IPv6]:PORT, where an unbracketed HOST has no colon;
// the text between the brackets is not checked here (the resolver does
// that), only that it is not empty.
std::optional<std::pair<std::string_view, std::string_view> > expected_split(std::string_view a)
{
    if (a.empty()) return std::nullopt;
    if (a[0] == '[') {
        std::size_t close = a.find(']');
        if (close == std::string_view::npos || close == 1) return std::nullopt;
        if (close + 1 >= a.size() || a[close + 1] != ':') return std::nullopt;
        return std::make_pair(a.substr(1, close - 1), a.substr(close + 2));
    }
    std::size_t colon = a.find(':');
    if (colon == std::string_view::npos) return std::make_pair(std::string_view(), a);
    if (a.find(':', colon + 1) != std::string_view::npos) return std::nullopt;
    return std::make_pair(a.substr(0, colon), a.substr(colon + 1));
}

std::optional<Parts> expected_endpoint(std::string_view a)
{
    auto split = expected_split(a);
    if (!split) return std::nullopt;
    std::optional<std::uint16_t> port = expected_port(split->second);
    if (!port) return std::nullopt;
    return Parts{std::string(split->first), *port};
}

// The documented form of an endpoint: a host with a colon, or one that
// starts with a bracket, goes in brackets.
std::string written(const Endpoint &e)
{
    if (e.host.empty()) return std::to_string(e.port);
    if (e.host.find(':') != std::string::npos || e.host[0] == '[')
        return "[" + e.host + "]:" + std::to_string(e.port);
    return e.host + ":" + std::to_string(e.port);
}

// ------------------------------------------------------------ checking

// The reason a helper gives (std::invalid_argument): not empty. It may quote
// its input as typed; the UsageError that carries it to the user escapes it.
void check_reason(const std::string &m, std::string_view input, const char *who)
{
    if (m.empty()) fuzz_fail(std::string(who) + ": empty message for " + fuzz_show(input));
}

// What the user sees: not empty, and no control character.
void check_message(const std::string &m, std::string_view input, const char *who)
{
    check_reason(m, input, who);
    for (char ch : m)
        if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f)
            fuzz_fail(std::string(who) + ": a control character in the message for " + fuzz_show(input)
                      + ": " + fuzz_show(m));
}

// A UsageError from parse_endpoint(arg, what): "bad WHAT 'ARG': REASON".
void check_usage_message(const std::string &m, std::string_view arg, const char *what,
                         std::string_view input, const char *who)
{
    check_message(m, input, who);
    std::string head = std::string("bad ") + what + " '" + printable(arg) + "': ";
    if (m.size() <= head.size() || m.compare(0, head.size(), head) != 0)
        fuzz_fail(std::string(who) + ": message " + fuzz_show(m) + " is not "
                  + fuzz_show(head) + " and a reason");
}

[[noreturn]] void wrong_exception(const char *who, std::string_view input, const char *expected)
{
    try {
        throw;
    } catch (const std::exception &x) {
        fuzz_fail(std::string(who) + " threw " + typeid(x).name() + " (" + fuzz_show(x.what())
                  + "), not " + expected + ", for " + fuzz_show(input));
    } catch (...) {
        fuzz_fail(std::string(who) + " threw a non-exception, not " + expected + ", for "
                  + fuzz_show(input));
    }
}

void check_same(const Endpoint &e, const Parts &want, const char *who, std::string_view input)
{
    if (e.host != want.host || e.port != want.port)
        fuzz_fail(std::string(who) + ": " + fuzz_show(input) + " gave host " + fuzz_show(e.host)
                  + " port " + std::to_string(e.port) + ", the forms say host "
                  + fuzz_show(want.host) + " port " + std::to_string(want.port));
}

// parse_endpoint as a listen address or a destination.
void check_endpoint(std::string_view a, const char *what)
{
    std::optional<Parts> want = expected_endpoint(a);
    Endpoint e;
    try {
        e = parse_endpoint(a, what);
    } catch (const UsageError &x) {
        if (want)
            fuzz_fail(std::string("parse_endpoint rejected ") + fuzz_show(a) + " (" + x.what()
                      + "), which the forms allow");
        check_usage_message(x.what(), a, what, a, "parse_endpoint");
        return;
    } catch (...) {
        wrong_exception("parse_endpoint", a, "UsageError");
    }
    if (!want) fuzz_fail("parse_endpoint accepted " + fuzz_show(a) + ", which the forms refuse");
    check_same(e, *want, "parse_endpoint", a);
    if (e.port < 1) fuzz_fail("parse_endpoint: port 0 from " + fuzz_show(a));
    if (e.text != a) fuzz_fail("parse_endpoint: text " + fuzz_show(e.text) + " for " + fuzz_show(a));
    if (e.weight != 1) fuzz_fail("parse_endpoint: weight " + std::to_string(e.weight));

    std::string again = written(e);
    Endpoint f;
    try {
        f = parse_endpoint(again, what);
    } catch (const std::exception &x) {
        fuzz_fail("parse_endpoint accepted " + fuzz_show(a) + " but not its written form "
                  + fuzz_show(again) + ": " + x.what());
    }
    if (f.host != e.host || f.port != e.port || f.text != again)
        fuzz_fail("parse_endpoint: " + fuzz_show(a) + " and its written form " + fuzz_show(again)
                  + " differ");
}

// get_addr and get_port: the parts of the forms, or std::invalid_argument.
void check_split(std::string_view a)
{
    // The splitter leaves the port to parse_port: "80a" and "[::1]:" split.
    auto want = expected_split(a);
    std::string host, port;
    try {
        host = get_addr(a);
        port = get_port(a);
    } catch (const std::invalid_argument &x) {
        if (want) fuzz_fail("get_addr/get_port rejected " + fuzz_show(a) + ": " + x.what());
        check_reason(x.what(), a, "split_host_port");
        return;
    } catch (...) {
        wrong_exception("get_addr/get_port", a, "std::invalid_argument");
    }
    if (!want) fuzz_fail("get_addr/get_port split " + fuzz_show(a) + ", which the forms refuse");
    if (host != want->first || port != want->second)
        fuzz_fail("get_addr/get_port split " + fuzz_show(a) + " into " + fuzz_show(host) + " and "
                  + fuzz_show(port));
}

void check_port(std::string_view s)
{
    std::optional<std::uint16_t> want = expected_port(s);
    std::uint16_t p = 0;
    try {
        p = parse_port(s);
    } catch (const std::invalid_argument &x) {
        if (want) fuzz_fail("parse_port rejected " + fuzz_show(s) + ": " + x.what());
        check_reason(x.what(), s, "parse_port");
        return;
    } catch (...) {
        wrong_exception("parse_port", s, "std::invalid_argument");
    }
    if (!want || p != *want)
        fuzz_fail("parse_port gave " + std::to_string(p) + " for " + fuzz_show(s));
}

// parse_dest: an endpoint, then optionally '@' and a weight from 1 to 256.
// The address part is quoted by the message when it is at fault, the whole
// argument when the weight is.
void check_dest(std::string_view a)
{
    std::size_t at = a.find('@');
    std::string_view place = a.substr(0, at);
    std::optional<Parts> want = expected_endpoint(place);
    std::optional<std::uint64_t> weight = 1;
    if (at != std::string_view::npos) {
        weight = small_number(a.substr(at + 1), 9);
        if (weight && (*weight < 1 || *weight > 256)) weight.reset();
    }
    Endpoint e;
    try {
        e = parse_dest(a);
    } catch (const UsageError &x) {
        if (want && weight)
            fuzz_fail(std::string("parse_dest rejected ") + fuzz_show(a) + " (" + x.what()
                      + "), which the forms allow");
        check_usage_message(x.what(), want ? a : place, "destination", a, "parse_dest");
        return;
    } catch (...) {
        wrong_exception("parse_dest", a, "UsageError");
    }
    if (!want || !weight)
        fuzz_fail("parse_dest accepted " + fuzz_show(a) + ", which the forms refuse");
    check_same(e, *want, "parse_dest", a);
    if (e.weight != *weight || e.weight < 1 || e.weight > 256)
        fuzz_fail("parse_dest: weight " + std::to_string(e.weight) + " for " + fuzz_show(a));
    if (e.text != a) fuzz_fail("parse_dest: text " + fuzz_show(e.text) + " for " + fuzz_show(a));

    std::string again = written(e) + (e.weight == 1 ? "" : "@" + std::to_string(e.weight));
    Endpoint f;
    try {
        f = parse_dest(again);
    } catch (const std::exception &x) {
        fuzz_fail("parse_dest accepted " + fuzz_show(a) + " but not its written form "
                  + fuzz_show(again) + ": " + x.what());
    }
    if (f.host != e.host || f.port != e.port || f.weight != e.weight)
        fuzz_fail("parse_dest: " + fuzz_show(a) + " and its written form " + fuzz_show(again)
                  + " differ");
}

// parse_stats_endpoint: the forms of LISTEN, and a bare port is 127.0.0.1.
void check_stats(std::string_view a)
{
    std::optional<Parts> want = expected_endpoint(a);
    if (want && want->host.empty()) want->host = "127.0.0.1";
    Endpoint e;
    try {
        e = parse_stats_endpoint(a);
    } catch (const UsageError &x) {
        if (want) fuzz_fail("parse_stats_endpoint rejected " + fuzz_show(a) + ": " + x.what());
        check_usage_message(x.what(), a, "statistics address", a, "parse_stats_endpoint");
        return;
    } catch (...) {
        wrong_exception("parse_stats_endpoint", a, "UsageError");
    }
    if (!want) fuzz_fail("parse_stats_endpoint accepted " + fuzz_show(a));
    check_same(e, *want, "parse_stats_endpoint", a);
}

// parse_duration: at most nine digits, then ms, s, m, h or nothing (seconds).
void check_duration(std::string_view s)
{
    std::size_t n = std::min(s.find_first_not_of(digits), s.size());
    std::optional<std::uint64_t> count = small_number(s.substr(0, n), 9);
    std::string_view unit = s.substr(n);
    std::optional<Time> want;
    if (count) {
        Time c = Time(*count);
        if (unit == "ms") want = c * msec;
        else if (unit.empty() || unit == "s") want = c * sec;
        else if (unit == "m") want = c * 60 * sec;
        else if (unit == "h") want = c * 3600 * sec;
    }
    Time t = 0;
    try {
        t = parse_duration(s);
    } catch (const std::invalid_argument &x) {
        if (want) fuzz_fail("parse_duration rejected " + fuzz_show(s) + ": " + x.what());
        check_reason(x.what(), s, "parse_duration");
        return;
    } catch (...) {
        wrong_exception("parse_duration", s, "std::invalid_argument");
    }
    if (!want || t != *want || t < 0)
        fuzz_fail("parse_duration gave " + std::to_string(t) + " us for " + fuzz_show(s));
    std::string text = format_duration(t);
    Time back = -1;
    try {
        back = parse_duration(text);
    } catch (const std::exception &x) {
        fuzz_fail("format_duration wrote " + fuzz_show(text) + " for " + fuzz_show(s)
                  + ", which parse_duration refuses: " + x.what());
    }
    if (back != t)
        fuzz_fail("format_duration wrote " + fuzz_show(text) + " for " + fuzz_show(s)
                  + ", which is " + std::to_string(back) + " us, not " + std::to_string(t));
}

void check_count(std::string_view s, unsigned long lo, unsigned long hi)
{
    std::optional<std::uint64_t> want = small_number(s, 9);
    if (want && (*want < lo || *want > hi)) want.reset();
    unsigned long v = 0;
    try {
        v = parse_count(s, lo, hi);
    } catch (const std::invalid_argument &x) {
        if (want) fuzz_fail("parse_count rejected " + fuzz_show(s) + ": " + x.what());
        check_reason(x.what(), s, "parse_count");
        return;
    } catch (...) {
        wrong_exception("parse_count", s, "std::invalid_argument");
    }
    if (!want || v != *want)
        fuzz_fail("parse_count gave " + std::to_string(v) + " for " + fuzz_show(s) + " in "
                  + std::to_string(lo) + ".." + std::to_string(hi));
}

// Nineteen bytes as an address: the family (even: IPv4, odd: IPv6), sixteen
// bytes of address (the first four for IPv4), and the port, high byte first.
// addr_to_string writes the form that parse_endpoint reads, so the text must
// read back to the same address and port (port 0 is refused).
void check_addr_text(const std::uint8_t *b)
{
    SockAddr a;
    bool v6 = b[0] & 1;
    std::uint16_t port = std::uint16_t(b[17] << 8 | b[18]);
    if (v6) {
        a.in6.sin6_family = AF_INET6;
        std::memcpy(&a.in6.sin6_addr, b + 1, 16);
        a.in6.sin6_port = htons(port);
        a.len = sizeof a.in6;
    } else {
        a.in4.sin_family = AF_INET;
        std::memcpy(&a.in4.sin_addr, b + 1, 4);
        a.in4.sin_port = htons(port);
        a.len = sizeof a.in4;
    }
    std::string text = addr_to_string(a);
    Endpoint e;
    try {
        e = parse_endpoint(text, "destination");
    } catch (const UsageError &x) {
        if (port != 0)
            fuzz_fail("addr_to_string wrote " + fuzz_show(text) + ", which parse_endpoint refuses: "
                      + x.what());
        return;
    }
    if (port == 0) fuzz_fail("parse_endpoint accepted port 0 in " + fuzz_show(text));
    unsigned char bytes[16] = {};
    if (e.port != port || inet_pton(v6 ? AF_INET6 : AF_INET, e.host.c_str(), bytes) != 1
        || std::memcmp(bytes, b + 1, v6 ? 16 : 4) != 0)
        fuzz_fail("addr_to_string wrote " + fuzz_show(text) + ", which reads back as host "
                  + fuzz_show(e.host) + " port " + std::to_string(e.port));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size)
{
    std::string_view a(reinterpret_cast<const char *>(data), size);
    // A rejection costs two exceptions, each some 10 us under the sanitizers,
    // so where a parser is called in different ways, the input's length
    // chooses one way instead of trying all of them.
    check_endpoint(a, size % 2 ? "listen address" : "destination");
    check_dest(a);
    check_stats(a);
    check_split(a);
    check_port(a);
    check_duration(a);
    if (size % 3 == 0) check_count(a, 1, 256);       // a weight
    if (size % 3 == 1) check_count(a, 1, 1024);      // --workers
    if (size % 3 == 2) check_count(a, 0, 100000000); // --queue-max
    if (size >= 19) check_addr_text(data);
    return 0;
}
