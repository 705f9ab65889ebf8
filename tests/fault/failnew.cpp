// Fault injection for the balancer under test, loaded with LD_PRELOAD. While the
// file named by IAWLB_FAIL_NEW exists, every operator new and new[] called by a
// thread whose name starts with "worker" fails (throws std::bad_alloc, or returns
// null for the nothrow forms), as it would if the process had run out of memory.
// Other threads, and every thread while the file is absent, get memory from
// malloc; the matching deletes free it with free, so the pairs stay matched (a
// sanitizer build intercepts malloc and free as usual).
//
// Built without sanitizers: it only forwards to malloc and free.
#include <sys/prctl.h>
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>
#include <new>

namespace {

bool failing() {
    const char* path = std::getenv("IAWLB_FAIL_NEW");
    struct stat st;
    if (!path || !*path || ::stat(path, &st) != 0) return false;
    char name[17] = {};
    if (::prctl(PR_GET_NAME, name) != 0) return false;
    return std::strncmp(name, "worker", 6) == 0;
}

void* take(std::size_t n) {
    if (failing()) return nullptr;
    return std::malloc(n ? n : 1);
}

void* take_or_throw(std::size_t n) {
    if (void* p = take(n)) return p;
    throw std::bad_alloc();
}

}  // namespace

void* operator new(std::size_t n) { return take_or_throw(n); }
void* operator new[](std::size_t n) { return take_or_throw(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return take(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return take(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
