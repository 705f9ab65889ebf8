// What both libFuzzer targets share: how a broken property stops the fuzzer,
// and the guards that make sure the parsers never print, exit, or touch a
// file, a socket or a signal.
//
// The guards. The targets do not link build-fuzz/iawlb.o itself but a copy,
// build-fuzz/iawlb-guarded.o, in which the Makefile has renamed every call that
// the balancer's code makes to a function listed below, one per line as
// IAWLB_FUZZ_GUARD(name), to iawlb_fuzz_guard_name (objcopy --redefine-sym;
// the Makefile reads the list from this file). The parsers are the only code
// of iawlb.o that the targets run, so any call that lands here came from a
// parser: the fuzzer stops, and the stack trace shows where it was made. Only
// calls from iawlb.o are renamed; the targets' own output and libFuzzer's are
// not affected.
#ifndef IAWLB_FUZZ_HPP
#define IAWLB_FUZZ_HPP

#include <cstdio>
#include <string>
#include <string_view>

// A broken property: say which one, and trap, which libFuzzer reports as a
// crash and saves the input for.
[[noreturn]] inline void fuzz_fail(const std::string &what)
{
    std::fprintf(stderr, "\nfuzz property violated: %s\n", what.c_str());
    std::fflush(stderr);
    __builtin_trap();
}

// The input, printably, for the messages of fuzz_fail.
inline std::string fuzz_show(std::string_view s)
{
    std::string out = "\"";
    for (unsigned char c : s) {
        if (c == '\\' || c == '"') {
            out += '\\';
            out += char(c);
        } else if (c >= 0x20 && c < 0x7f) {
            out += char(c);
        } else {
            char hex[8];
            std::snprintf(hex, sizeof hex, "\\x%02x", c);
            out += hex;
        }
    }
    return out + "\"";
}

#define IAWLB_FUZZ_GUARD(name) \
    extern "C" void iawlb_fuzz_guard_##name() { fuzz_fail("a parser called " #name "()"); }

// Leaving the process.
IAWLB_FUZZ_GUARD(exit)
IAWLB_FUZZ_GUARD(_exit)
IAWLB_FUZZ_GUARD(quick_exit)
// Printing, and files.
IAWLB_FUZZ_GUARD(printf)
IAWLB_FUZZ_GUARD(fprintf)
IAWLB_FUZZ_GUARD(vfprintf)
IAWLB_FUZZ_GUARD(puts)
IAWLB_FUZZ_GUARD(fputs)
IAWLB_FUZZ_GUARD(fputc)
IAWLB_FUZZ_GUARD(putchar)
IAWLB_FUZZ_GUARD(fwrite)
IAWLB_FUZZ_GUARD(perror)
IAWLB_FUZZ_GUARD(fopen)
IAWLB_FUZZ_GUARD(open)
IAWLB_FUZZ_GUARD(openat)
IAWLB_FUZZ_GUARD(read)
IAWLB_FUZZ_GUARD(write)
IAWLB_FUZZ_GUARD(writev)
IAWLB_FUZZ_GUARD(close)
// The network.
IAWLB_FUZZ_GUARD(socket)
IAWLB_FUZZ_GUARD(bind)
IAWLB_FUZZ_GUARD(listen)
IAWLB_FUZZ_GUARD(accept4)
IAWLB_FUZZ_GUARD(connect)
IAWLB_FUZZ_GUARD(send)
IAWLB_FUZZ_GUARD(recv)
IAWLB_FUZZ_GUARD(sendto)
IAWLB_FUZZ_GUARD(recvfrom)
IAWLB_FUZZ_GUARD(shutdown)
IAWLB_FUZZ_GUARD(setsockopt)
IAWLB_FUZZ_GUARD(getsockopt)
IAWLB_FUZZ_GUARD(getsockname)
IAWLB_FUZZ_GUARD(getaddrinfo)
// Waiting, signals, limits.
IAWLB_FUZZ_GUARD(poll)
IAWLB_FUZZ_GUARD(epoll_create1)
IAWLB_FUZZ_GUARD(epoll_ctl)
IAWLB_FUZZ_GUARD(epoll_wait)
IAWLB_FUZZ_GUARD(eventfd)
IAWLB_FUZZ_GUARD(signalfd)
IAWLB_FUZZ_GUARD(signal)
IAWLB_FUZZ_GUARD(pthread_sigmask)
IAWLB_FUZZ_GUARD(setrlimit)

#undef IAWLB_FUZZ_GUARD

#endif
