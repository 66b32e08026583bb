// Stand-in for libnccl (NCCL 2.30 API subset) for the CPU emulation: communicators across
// processes of one machine over loopback TCP, so CI runs data-parallel training without GPUs.
// Built by build.rs as OUT_DIR/emu/libnccl.so.2 (SONAME libnccl.so, the first name cudarc's
// loader asks for); src/backend/cuda/nccl.rs loads it by full path when the CUDA emulation is
// in use, so cudarc's own dlopen("libnccl.so") returns it. Never loaded beside a real GPU.
//
// Design: ncclGetUniqueId starts a hub thread in the calling process, listening on
// 127.0.0.1:<ephemeral port>; the 128-byte id carries the port, the creator's pid and a random
// nonce. ncclCommInitRank(Config) starts the communicator's proxy thread, which connects to the
// hub and waits until all nranks ranks have joined (in the background for a non-blocking
// config: the call returns ncclInProgress). Every collective is queued for the proxy, which
// sends (header, payload) to the hub; the hub reads the ranks in rank order, checks that all
// called the same collective (kind, type, count, root, sequence number: NCCL's "same order on
// every rank" rule), combines in rank order ((r0 + r1) + r2 ...; identical bits on every rank
// and from run to run) and sends the result back. On a non-blocking communicator the call
// returns ncclInProgress and ncclCommGetAsyncError says ncclInProgress until the result is in
// place (the emulated stream completes at issue time, so "issued" here means "done"); a
// blocking one waits. Between ncclGroupStart and ncclGroupEnd calls are queued and issued in
// order at the outermost ncclGroupEnd.
//
// Failures, as the real library reports them: a rank whose connection closes (process died,
// ncclCommAbort) or that sends nothing for HRM_NCCL_EMU_TIMEOUT_S seconds (default 600) makes
// the hub fail the pending collective on every other rank. The call that issued it returned
// success (or ncclInProgress); the failure is the communicator's asynchronous error
// (ncclCommGetAsyncError: ncclRemoteError), ncclGetLastError says which rank and why, and the
// receive buffer keeps whatever it held. ncclCommAbort and ncclCommDestroy free the
// communicator: a later call with that handle is reported as a use after free and stops the
// process. Device pointers are checked against the emulation's live allocations.
//
// Planted bugs for the self-tests, which must then fail: HRM_NCCL_EMU_PLANT=reverse makes the
// hub combine (and gather) ranks in reverse order; =drop makes an all-reduce return rank 0's
// values alone (a reduction that never happened).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "runtime.h"

extern "C" {
typedef enum {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
  ncclInProgress = 7,
} ncclResult_t;
typedef enum {
  ncclInt8 = 0,
  ncclUint8 = 1,
  ncclInt32 = 2,
  ncclUint32 = 3,
  ncclInt64 = 4,
  ncclUint64 = 5,
  ncclFloat16 = 6,
  ncclFloat32 = 7,
  ncclFloat64 = 8,
  ncclBfloat16 = 9,
} ncclDataType_t;
typedef enum { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4 } ncclRedOp_t;
typedef struct {
  char internal[128];
} ncclUniqueId;
typedef struct ncclComm* ncclComm_t;
}

namespace {

constexpr char kMagic[8] = {'H', 'R', 'M', 'N', 'C', 'C', 'L', '1'};

enum Op : uint32_t { OP_ALLREDUCE = 1, OP_BROADCAST = 2, OP_ALLGATHER = 3, OP_DESTROY = 4 };

const char* op_name(uint32_t op) {
  switch (op) {
    case OP_ALLREDUCE: return "ncclAllReduce";
    case OP_BROADCAST: return "ncclBroadcast";
    case OP_ALLGATHER: return "ncclAllGather";
    case OP_DESTROY: return "ncclCommDestroy";
  }
  return "?";
}

struct IdData {
  char magic[8];
  uint32_t port;
  uint32_t pid;
  uint64_t nonce;
};

struct Hello {
  char magic[8];
  uint64_t nonce;
  int32_t nranks;
  int32_t rank;
  int32_t pid;
  int32_t pad;
};

struct Header {
  uint64_t seq;
  uint32_t op;
  uint32_t dtype;
  uint32_t redop;
  int32_t root;
  uint64_t count;  // elements per rank (all-gather: the send count)
};

struct Reply {
  int32_t status;     // ncclResult_t
  uint32_t msg_len;   // then msg_len bytes of message, then the payload on success
  uint64_t payload;   // bytes
};

double timeout_s() {
  const char* v = getenv("HRM_NCCL_EMU_TIMEOUT_S");
  if (v && *v) {
    double t = atof(v);
    if (t > 0) return t;
  }
  return 600.0;
}

using Clock = std::chrono::steady_clock;

// Reads exactly n bytes; false with *why on EOF, error, timeout or abort.
bool read_full(int fd, void* buf, size_t n, double timeout, const std::atomic<bool>* abort,
               std::string* why) {
  char* p = static_cast<char*>(buf);
  auto deadline = Clock::now() + std::chrono::duration<double>(timeout);
  while (n > 0) {
    if (abort && abort->load()) {
      *why = "the communicator was aborted";
      return false;
    }
    auto left = std::chrono::duration<double>(deadline - Clock::now()).count();
    if (left <= 0) {
      char b[64];
      snprintf(b, sizeof b, "no data for %.0f s (timeout)", timeout);
      *why = b;
      return false;
    }
    pollfd pfd{fd, POLLIN, 0};
    int slice = static_cast<int>(left * 1000 < 200 ? left * 1000 + 1 : 200);
    int r = poll(&pfd, 1, slice);
    if (r < 0) {
      if (errno == EINTR) continue;
      *why = std::string("poll: ") + strerror(errno);
      return false;
    }
    if (r == 0) continue;
    ssize_t got = recv(fd, p, n, 0);
    if (got == 0) {
      *why = "connection closed";
      return false;
    }
    if (got < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      *why = std::string("recv: ") + strerror(errno);
      return false;
    }
    p += got;
    n -= static_cast<size_t>(got);
  }
  return true;
}

bool write_full(int fd, const void* buf, size_t n, std::string* why) {
  const char* p = static_cast<const char*>(buf);
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      *why = std::string("send: ") + strerror(errno);
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

size_t type_size(uint32_t t) {
  switch (t) {
    case ncclInt8:
    case ncclUint8: return 1;
    case ncclFloat16:
    case ncclBfloat16: return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32: return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64: return 8;
  }
  return 0;
}

template <typename T>
void combine_t(T* acc, const T* x, size_t n, uint32_t op) {
  for (size_t i = 0; i < n; i++) {
    switch (op) {
      case ncclSum: acc[i] = acc[i] + x[i]; break;
      case ncclProd: acc[i] = acc[i] * x[i]; break;
      case ncclMax: acc[i] = acc[i] > x[i] ? acc[i] : x[i]; break;
      case ncclMin: acc[i] = acc[i] < x[i] ? acc[i] : x[i]; break;
    }
  }
}

void combine(void* acc, const void* x, size_t n, uint32_t dtype, uint32_t op) {
  switch (dtype) {
    case ncclInt8: combine_t(static_cast<int8_t*>(acc), static_cast<const int8_t*>(x), n, op); break;
    case ncclUint8: combine_t(static_cast<uint8_t*>(acc), static_cast<const uint8_t*>(x), n, op); break;
    case ncclInt32: combine_t(static_cast<int32_t*>(acc), static_cast<const int32_t*>(x), n, op); break;
    case ncclUint32: combine_t(static_cast<uint32_t*>(acc), static_cast<const uint32_t*>(x), n, op); break;
    case ncclInt64: combine_t(static_cast<int64_t*>(acc), static_cast<const int64_t*>(x), n, op); break;
    case ncclUint64: combine_t(static_cast<uint64_t*>(acc), static_cast<const uint64_t*>(x), n, op); break;
    case ncclFloat32: combine_t(static_cast<float*>(acc), static_cast<const float*>(x), n, op); break;
    case ncclFloat64: combine_t(static_cast<double*>(acc), static_cast<const double*>(x), n, op); break;
  }
}

// Bytes each rank sends for a header (non-roots send nothing for a broadcast).
uint64_t send_bytes(const Header& h, int rank) {
  size_t ts = type_size(h.dtype);
  switch (h.op) {
    case OP_ALLREDUCE:
    case OP_ALLGATHER: return h.count * ts;
    case OP_BROADCAST: return rank == h.root ? h.count * ts : 0;
  }
  return 0;
}

// ---- The hub: one thread in the process that made the unique id. ----

struct Peer {
  int fd = -1;
  int pid = 0;
};

void hub_fail(std::vector<Peer>& peers, const std::string& msg) {
  Reply r{ncclRemoteError, static_cast<uint32_t>(msg.size()), 0};
  std::string ignore;
  for (auto& p : peers) {
    if (p.fd < 0) continue;
    if (write_full(p.fd, &r, sizeof r, &ignore)) write_full(p.fd, msg.data(), msg.size(), &ignore);
    shutdown(p.fd, SHUT_RDWR);
    close(p.fd);
    p.fd = -1;
  }
}

void hub_main(int listen_fd, uint64_t nonce) {
  const double timeout = timeout_s();
  const char* plant = getenv("HRM_NCCL_EMU_PLANT");
  const bool reverse = plant && strcmp(plant, "reverse") == 0;
  const bool drop = plant && strcmp(plant, "drop") == 0;
  std::vector<Peer> peers;
  int nranks = -1, joined = 0;
  auto deadline = Clock::now() + std::chrono::duration<double>(timeout);
  std::string why;
  // Join: accept until every rank has said hello.
  while (nranks < 0 || joined < nranks) {
    auto left = std::chrono::duration<double>(deadline - Clock::now()).count();
    pollfd pfd{listen_fd, POLLIN, 0};
    if (left <= 0 || poll(&pfd, 1, static_cast<int>(left * 1000) + 1) <= 0) {
      std::string missing;
      for (int r = 0; r < nranks; r++)
        if (peers[r].fd < 0) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      char b[160];
      snprintf(b, sizeof b, "ncclCommInitRank: only %d of %d ranks joined within %.0f s (missing: ",
               joined, nranks, timeout);
      hub_fail(peers, b + (missing.empty() ? std::string("?") : missing) + ")");
      close(listen_fd);
      return;
    }
    int fd = accept(listen_fd, nullptr, nullptr);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    Hello h{};
    if (!read_full(fd, &h, sizeof h, 30.0, nullptr, &why) || memcmp(h.magic, kMagic, 8) != 0 ||
        h.nonce != nonce) {
      close(fd);  // not one of ours (or a stale id): ignore
      continue;
    }
    std::string bad;
    if (nranks < 0) {
      if (h.nranks < 1) {
        bad = "ncclCommInitRank: nranks must be at least 1";
      } else {
        nranks = h.nranks;
        peers.assign(nranks, Peer{});
      }
    }
    if (bad.empty() && h.nranks != nranks) {
      bad = "ncclCommInitRank: rank " + std::to_string(h.rank) + " says nranks = " +
            std::to_string(h.nranks) + " but another rank said " + std::to_string(nranks);
    } else if (bad.empty() && (h.rank < 0 || h.rank >= nranks)) {
      bad = "ncclCommInitRank: rank " + std::to_string(h.rank) + " outside [0, " +
            std::to_string(nranks) + ")";
    } else if (bad.empty() && peers[h.rank].fd >= 0) {
      bad = "ncclCommInitRank: rank " + std::to_string(h.rank) + " joined twice";
    }
    if (!bad.empty()) {
      Reply r{ncclInvalidUsage, static_cast<uint32_t>(bad.size()), 0};
      write_full(fd, &r, sizeof r, &why);
      write_full(fd, bad.data(), bad.size(), &why);
      close(fd);
      hub_fail(peers, bad);
      close(listen_fd);
      return;
    }
    peers[h.rank].fd = fd;
    peers[h.rank].pid = h.pid;
    joined++;
  }
  close(listen_fd);
  for (auto& p : peers) {
    Reply r{ncclSuccess, 0, 0};
    write_full(p.fd, &r, sizeof r, &why);
  }
  // Collectives, one after another, in the order every rank issues them.
  std::vector<std::vector<char>> data(nranks);
  std::vector<Header> hs(nranks);
  for (uint64_t seq = 0;; seq++) {
    for (int r = 0; r < nranks; r++) {
      std::string w;
      if (!read_full(peers[r].fd, &hs[r], sizeof(Header), timeout, nullptr, &w)) {
        char b[256];
        snprintf(b, sizeof b, "rank %d (pid %d) failed at collective #%llu: %s", r, peers[r].pid,
                 static_cast<unsigned long long>(seq), w.c_str());
        hub_fail(peers, b);
        return;
      }
      const Header& h = hs[r];
      const Header& h0 = hs[0];
      if (h.seq != seq || h.op != h0.op || h.dtype != h0.dtype || h.redop != h0.redop ||
          h.root != h0.root || h.count != h0.count) {
        char b[384];
        snprintf(b, sizeof b,
                 "collective #%llu differs between ranks: rank 0 called %s(type %u, op %u, "
                 "count %llu, root %d) but rank %d called %s(type %u, op %u, count %llu, root %d)",
                 static_cast<unsigned long long>(seq), op_name(h0.op), h0.dtype, h0.redop,
                 static_cast<unsigned long long>(h0.count), h0.root, r, op_name(h.op), h.dtype,
                 h.redop, static_cast<unsigned long long>(h.count), h.root);
        hub_fail(peers, b);
        return;
      }
      uint64_t n = send_bytes(h, r);
      data[r].resize(n);
      if (n > 0 && !read_full(peers[r].fd, data[r].data(), n, timeout, nullptr, &w)) {
        char b[256];
        snprintf(b, sizeof b, "rank %d (pid %d) failed while sending collective #%llu: %s", r,
                 peers[r].pid, static_cast<unsigned long long>(seq), w.c_str());
        hub_fail(peers, b);
        return;
      }
    }
    const Header& h = hs[0];
    if (h.op == OP_DESTROY) {
      for (auto& p : peers) close(p.fd);
      return;
    }
    std::vector<char> result;
    if (h.op == OP_ALLREDUCE) {
      int first = reverse ? nranks - 1 : 0;
      result = data[first];
      for (int k = 1; k < nranks && !drop; k++) {
        int r = reverse ? nranks - 1 - k : k;
        combine(result.data(), data[r].data(), h.count, h.dtype, h.redop);
      }
    } else if (h.op == OP_BROADCAST) {
      result = data[h.root];
    } else {
      for (int k = 0; k < nranks; k++) {
        int r = reverse ? nranks - 1 - k : k;
        result.insert(result.end(), data[r].begin(), data[r].end());
      }
    }
    Reply rep{ncclSuccess, 0, result.size()};
    for (int r = 0; r < nranks; r++) {
      std::string w;
      if (!write_full(peers[r].fd, &rep, sizeof rep, &w) ||
          !write_full(peers[r].fd, result.data(), result.size(), &w)) {
        char b[256];
        snprintf(b, sizeof b, "rank %d (pid %d) unreachable after collective #%llu: %s", r,
                 peers[r].pid, static_cast<unsigned long long>(seq), w.c_str());
        hub_fail(peers, b);
        return;
      }
    }
  }
}

// ---- The rank side. ----
//
// Each communicator has a proxy thread (as NCCL has): it joins the hub in the background (so a
// non-blocking ncclCommInitRankConfig returns ncclInProgress at once) and then runs the issued
// collectives in order. A failure (a peer that died, a hub that gave up) is not the return
// value of the call that issued the collective: it becomes the communicator's asynchronous
// error (ncclCommGetAsyncError), as on a GPU, where the call has long returned ncclSuccess when
// the kernel meets the dead peer.

struct Pending {
  Header h;
  const void* send;
  void* recv;
};

std::mutex g_err_mu;
std::string g_last_error;

void set_error(const std::string& msg) {
  std::lock_guard<std::mutex> g(g_err_mu);
  g_last_error = msg;
}

}  // namespace

struct ncclComm {
  int rank = 0;
  int nranks = 0;
  bool blocking = true;
  IdData id{};
  std::atomic<int> fd{-1};
  std::atomic<bool> aborted{false};
  uint64_t seq = 0;  // proxy thread only
  // Guarded by mu:
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Pending> queue;  // issued, not yet completed (the front one may be running)
  uint64_t issued = 0, completed = 0;
  ncclResult_t async = ncclInProgress;  // what ncclCommGetAsyncError reports
  std::string error;
};

namespace {

// Live communicators. ncclCommAbort and ncclCommDestroy free one (here: take it out of this
// registry); a call with a freed handle is a use after free on a real NCCL, so it is reported
// and the process stops. Freed objects are kept (a few bytes each) so an address is never
// reused and a stale handle is always recognised.
std::mutex g_live_mu;
std::map<ncclComm*, std::shared_ptr<ncclComm>> g_live;
std::vector<std::shared_ptr<ncclComm>> g_freed;

thread_local int t_group_depth = 0;
thread_local std::vector<std::pair<std::shared_ptr<ncclComm>, Pending>> t_queue;

std::shared_ptr<ncclComm> live(ncclComm_t comm, const char* call) {
  std::lock_guard<std::mutex> g(g_live_mu);
  auto it = g_live.find(comm);
  if (it != g_live.end()) return it->second;
  fprintf(stderr,
          "NCCL stand-in: %s on communicator %p, which ncclCommAbort or ncclCommDestroy already "
          "freed (a use after free with the real NCCL)\n",
          call, static_cast<void*>(comm));
  fflush(stderr);
  abort();
}

void release(const std::shared_ptr<ncclComm>& c) {
  std::lock_guard<std::mutex> g(g_live_mu);
  g_live.erase(c.get());
  g_freed.push_back(c);
}

ncclResult_t fail(ncclComm* comm, ncclResult_t code, const std::string& msg) {
  if (comm) {
    std::lock_guard<std::mutex> g(comm->mu);
    comm->error = msg;
  }
  set_error(msg);
  return code;
}

bool dev_ok(const void* p, size_t bytes) {
  return bytes == 0 || emu::mem_range_ok(reinterpret_cast<uint64_t>(p), bytes);
}

// Connects to the hub and waits until every rank has joined.
ncclResult_t join_hub(ncclComm* c, std::string* why) {
  const IdData& d = c->id;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(d.port));
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    std::string e = strerror(errno);
    if (fd >= 0) close(fd);
    *why = "ncclCommInitRank: cannot reach the id's creator (pid " + std::to_string(d.pid) +
           ") on 127.0.0.1:" + std::to_string(d.port) + ": " + e;
    return ncclSystemError;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c->fd = fd;
  if (c->aborted.load()) shutdown(fd, SHUT_RDWR);  // an abort that came before the socket
  Hello h{};
  memcpy(h.magic, kMagic, 8);
  h.nonce = d.nonce;
  h.nranks = c->nranks;
  h.rank = c->rank;
  h.pid = static_cast<int32_t>(getpid());
  Reply rep{};
  std::string w;
  if (!write_full(fd, &h, sizeof h, &w) ||
      !read_full(fd, &rep, sizeof rep, timeout_s() + 5, &c->aborted, &w)) {
    *why = "ncclCommInitRank: rank " + std::to_string(c->rank) + ": " + w;
    return ncclSystemError;
  }
  if (rep.status != ncclSuccess) {
    std::string msg(rep.msg_len, '\0');
    read_full(fd, msg.data(), rep.msg_len, 30, &c->aborted, &w);
    *why = msg;
    return static_cast<ncclResult_t>(rep.status);
  }
  return ncclSuccess;
}

// One collective through the hub; false with *why when it could not complete.
bool exchange(ncclComm* c, const Pending& op, std::string* why) {
  Header h = op.h;
  h.seq = c->seq++;
  uint64_t n = send_bytes(h, c->rank);
  int fd = c->fd;
  bool ok = write_full(fd, &h, sizeof h, why) && (n == 0 || write_full(fd, op.send, n, why));
  Reply rep{};
  ok = ok && read_full(fd, &rep, sizeof rep, timeout_s() + 5, &c->aborted, why);
  std::string msg;
  if (ok && rep.msg_len > 0) {
    msg.resize(rep.msg_len);
    ok = read_full(fd, msg.data(), rep.msg_len, 30, &c->aborted, why);
  }
  if (ok && rep.status != ncclSuccess) {
    *why = msg;  // the hub's reason
    return false;
  }
  if (!ok) return false;
  uint64_t want = h.op == OP_ALLGATHER ? h.count * type_size(h.dtype) * c->nranks
                                       : h.count * type_size(h.dtype);
  if (rep.payload != want) {
    *why = "protocol error: result of " + std::to_string(rep.payload) + " bytes, expected " +
           std::to_string(want);
    return false;
  }
  std::vector<char> buf(want);
  if (!read_full(fd, buf.data(), want, 60, &c->aborted, why)) return false;
  memmove(op.recv, buf.data(), want);
  return true;
}

void proxy_main(std::shared_ptr<ncclComm> c) {
  std::string why;
  ncclResult_t joined = join_hub(c.get(), &why);
  {
    std::lock_guard<std::mutex> g(c->mu);
    if (joined != ncclSuccess) {
      c->async = joined;
      c->error = why;
    } else {
      c->async = c->queue.empty() ? ncclSuccess : ncclInProgress;
    }
    c->cv.notify_all();
  }
  if (joined != ncclSuccess) {
    set_error(why);
  } else {
    for (;;) {
      Pending op;
      {
        std::unique_lock<std::mutex> lk(c->mu);
        c->cv.wait(lk, [&] { return !c->queue.empty() || c->aborted.load(); });
        if (c->aborted.load()) break;
        op = c->queue.front();
      }
      if (op.h.op == OP_DESTROY) {
        Header h = op.h;
        h.seq = c->seq++;
        write_full(c->fd, &h, sizeof h, &why);
        break;
      }
      bool ok = exchange(c.get(), op, &why);
      std::lock_guard<std::mutex> g(c->mu);
      c->queue.pop_front();
      c->completed++;
      if (!ok) {
        // Everything still queued behind it is dropped: the communicator is broken.
        c->completed += c->queue.size();
        c->queue.clear();
        c->async = c->aborted.load() ? ncclInvalidUsage : ncclRemoteError;
        c->error = std::string(op_name(op.h.op)) + " on rank " + std::to_string(c->rank) + ": " +
                   (c->aborted.load() ? "the communicator was aborted" : why);
        set_error(c->error);
      } else if (c->queue.empty()) {
        c->async = ncclSuccess;
      }
      c->cv.notify_all();
      if (!ok) break;
    }
  }
  int fd = c->fd.exchange(-1);
  if (fd >= 0) close(fd);
  std::lock_guard<std::mutex> g(c->mu);
  c->cv.notify_all();
}

// Queues `ops` (all on `c`) for its proxy. A non-blocking communicator returns ncclInProgress
// at once; a blocking one waits for the proxy (the emulated stream completes work at issue
// time) but, as the real library, returns ncclSuccess even when the collective failed: that
// shows in ncclCommGetAsyncError.
ncclResult_t enqueue(const std::shared_ptr<ncclComm>& c, const std::vector<Pending>& ops) {
  std::unique_lock<std::mutex> lk(c->mu);
  if (c->async == ncclInProgress) {
    lk.unlock();
    return fail(c.get(), ncclInvalidUsage,
                std::string(op_name(ops[0].h.op)) +
                    ": the communicator is still busy (ncclInProgress): poll ncclCommGetAsyncError "
                    "until it is done before the next call");
  }
  if (c->async != ncclSuccess) return c->async;  // failed earlier; ncclGetLastError says why
  for (const auto& op : ops) c->queue.push_back(op);
  c->issued += ops.size();
  c->async = ncclInProgress;
  c->cv.notify_all();
  if (!c->blocking) return ncclInProgress;
  uint64_t ticket = c->issued;
  c->cv.wait(lk, [&] { return c->completed >= ticket || c->aborted.load(); });
  return ncclSuccess;
}

ncclResult_t issue(ncclComm_t comm, uint32_t op, const void* send, void* recv, size_t count,
                   ncclDataType_t dtype, ncclRedOp_t redop, int root) {
  if (!comm) return fail(nullptr, ncclInvalidArgument, std::string(op_name(op)) + ": null communicator");
  auto c = live(comm, op_name(op));
  size_t ts = type_size(dtype);
  if (ts == 0) return fail(c.get(), ncclInvalidArgument, std::string(op_name(op)) + ": unsupported data type");
  if (op == OP_ALLREDUCE) {
    if (redop > ncclMin) return fail(c.get(), ncclInvalidArgument, "ncclAllReduce: unsupported reduction op");
    if (dtype == ncclFloat16 || dtype == ncclBfloat16)
      return fail(c.get(), ncclInvalidArgument, "ncclAllReduce: 16-bit floats are not emulated");
  }
  if (op == OP_BROADCAST && (root < 0 || root >= c->nranks))
    return fail(c.get(), ncclInvalidArgument, "ncclBroadcast: root outside the communicator");
  size_t in_bytes = count * ts;
  size_t out_bytes = op == OP_ALLGATHER ? in_bytes * c->nranks : in_bytes;
  bool needs_send = op != OP_BROADCAST || root == c->rank;
  if ((needs_send && !dev_ok(send, in_bytes)) || !dev_ok(recv, out_bytes))
    return fail(c.get(), ncclInvalidArgument,
                std::string(op_name(op)) + ": a buffer is not inside one live device allocation");
  Pending p{Header{0, op, static_cast<uint32_t>(dtype), static_cast<uint32_t>(redop), root, count},
            send, recv};
  if (t_group_depth > 0) {
    t_queue.emplace_back(c, p);
    return ncclSuccess;
  }
  return enqueue(c, {p});
}

}  // namespace

extern "C" {

typedef struct {
  size_t size;
  unsigned int magic;
  unsigned int version;
  int blocking;  // the rest of ncclConfig_t is not read here
} ncclConfigPrefix;

__attribute__((visibility("default"))) ncclResult_t ncclGetVersion(int* version) {
  if (!version) return ncclInvalidArgument;
  *version = 23007;
  return ncclSuccess;
}

__attribute__((visibility("default"))) const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
  }
  return "unknown result code";
}

__attribute__((visibility("default"))) const char* ncclGetLastError(ncclComm_t comm) {
  static thread_local std::string copy;
  if (comm) {
    auto c = live(comm, "ncclGetLastError");
    std::lock_guard<std::mutex> g(c->mu);
    if (!c->error.empty()) {
      copy = c->error;
      return copy.c_str();
    }
  }
  std::lock_guard<std::mutex> g(g_err_mu);
  copy = g_last_error;
  return copy.c_str();
}

__attribute__((visibility("default"))) ncclResult_t ncclGetUniqueId(ncclUniqueId* out) {
  if (!out) return ncclInvalidArgument;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return fail(nullptr, ncclSystemError, std::string("ncclGetUniqueId: socket: ") + strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd, 64) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    std::string e = strerror(errno);
    close(fd);
    return fail(nullptr, ncclSystemError, "ncclGetUniqueId: cannot listen on 127.0.0.1: " + e);
  }
  IdData d{};
  memcpy(d.magic, kMagic, 8);
  d.port = ntohs(a.sin_port);
  d.pid = static_cast<uint32_t>(getpid());
  std::random_device rd;
  d.nonce = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(Clock::now().time_since_epoch().count());
  memset(out->internal, 0, sizeof out->internal);
  memcpy(out->internal, &d, sizeof d);
  std::thread(hub_main, fd, d.nonce).detach();
  return ncclSuccess;
}

// Non-blocking (config->blocking == 0): returns ncclInProgress with the handle at once; the
// join completes in the background (ncclCommGetAsyncError says when, or why it failed), and
// ncclCommAbort may end it meanwhile. Blocking: waits for the join; a failed one frees the
// communicator and returns the error.
__attribute__((visibility("default"))) ncclResult_t ncclCommInitRankConfig(ncclComm_t* out, int nranks,
                                                                           ncclUniqueId id, int rank,
                                                                           ncclConfigPrefix* config) {
  if (!out) return ncclInvalidArgument;
  *out = nullptr;
  bool blocking = true;
  if (config) {
    if (config->magic != 0xcafebeefu || config->size < sizeof(ncclConfigPrefix))
      return fail(nullptr, ncclInvalidArgument,
                  "ncclCommInitRankConfig: the config was not made from NCCL_CONFIG_INITIALIZER "
                  "(size or magic wrong)");
    if (config->blocking != INT_MIN) blocking = config->blocking != 0;
  }
  IdData d;
  memcpy(&d, id.internal, sizeof d);
  if (memcmp(d.magic, kMagic, 8) != 0)
    return fail(nullptr, ncclInvalidArgument, "ncclCommInitRank: not a unique id of this NCCL stand-in");
  if (nranks < 1 || rank < 0 || rank >= nranks)
    return fail(nullptr, ncclInvalidArgument,
                "ncclCommInitRank: rank " + std::to_string(rank) + " of " + std::to_string(nranks));
  auto c = std::make_shared<ncclComm>();
  c->rank = rank;
  c->nranks = nranks;
  c->blocking = blocking;
  c->id = d;
  {
    std::lock_guard<std::mutex> g(g_live_mu);
    g_live[c.get()] = c;
  }
  std::thread(proxy_main, c).detach();
  if (!blocking) {
    *out = c.get();
    return ncclInProgress;
  }
  std::unique_lock<std::mutex> lk(c->mu);
  c->cv.wait(lk, [&] { return c->async != ncclInProgress; });
  ncclResult_t r = c->async;
  lk.unlock();
  if (r != ncclSuccess) {
    release(c);
    return r;
  }
  *out = c.get();
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t ncclCommInitRank(ncclComm_t* out, int nranks,
                                                                     ncclUniqueId id, int rank) {
  return ncclCommInitRankConfig(out, nranks, id, rank, nullptr);
}

__attribute__((visibility("default"))) ncclResult_t ncclCommGetAsyncError(ncclComm_t comm,
                                                                          ncclResult_t* state) {
  if (!comm || !state) return ncclInvalidArgument;
  auto c = live(comm, "ncclCommGetAsyncError");
  std::lock_guard<std::mutex> g(c->mu);
  *state = c->async;
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  if (!comm || !count) return ncclInvalidArgument;
  *count = live(comm, "ncclCommCount")->nranks;
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  if (!comm || !rank) return ncclInvalidArgument;
  *rank = live(comm, "ncclCommUserRank")->rank;
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int* device) {
  if (!comm || !device) return ncclInvalidArgument;
  live(comm, "ncclCommCuDevice");
  *device = 0;
  return ncclSuccess;
}

// Waits until everything issued has completed; the communicator's state then.
__attribute__((visibility("default"))) ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  if (!comm) return ncclInvalidArgument;
  auto c = live(comm, "ncclCommFinalize");
  std::unique_lock<std::mutex> lk(c->mu);
  c->cv.wait(lk, [&] { return c->queue.empty() || c->aborted.load(); });
  return c->async;
}

// Orderly end: the hub waits for every rank's destroy. Frees the communicator.
__attribute__((visibility("default"))) ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (!comm) return ncclSuccess;
  auto c = live(comm, "ncclCommDestroy");
  release(c);
  std::lock_guard<std::mutex> g(c->mu);
  if (c->async == ncclSuccess && c->fd >= 0) {
    c->queue.push_back(Pending{Header{0, OP_DESTROY, 0, 0, 0, 0}, nullptr, nullptr});
  } else {
    c->aborted = true;
    int fd = c->fd;
    if (fd >= 0) shutdown(fd, SHUT_RDWR);
  }
  c->cv.notify_all();
  return ncclSuccess;
}

// Frees the communicator and stops its proxy (also in the middle of a start-up or a
// collective): the peers' pending collectives fail naming this rank.
__attribute__((visibility("default"))) ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (!comm) return ncclSuccess;
  auto c = live(comm, "ncclCommAbort");
  release(c);
  c->aborted = true;
  int fd = c->fd;
  if (fd >= 0) shutdown(fd, SHUT_RDWR);
  std::lock_guard<std::mutex> g(c->mu);
  c->cv.notify_all();
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t ncclGroupStart() {
  t_group_depth++;
  return ncclSuccess;
}

// Issues the calls made since the outermost ncclGroupStart, in order, per communicator.
__attribute__((visibility("default"))) ncclResult_t ncclGroupEnd() {
  if (t_group_depth == 0) return fail(nullptr, ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
  if (--t_group_depth > 0) return ncclSuccess;
  auto queue = std::move(t_queue);
  t_queue.clear();
  std::vector<std::pair<std::shared_ptr<ncclComm>, std::vector<Pending>>> per_comm;
  for (auto& [c, op] : queue) {
    auto it = std::find_if(per_comm.begin(), per_comm.end(), [&](auto& e) { return e.first == c; });
    if (it == per_comm.end()) {
      per_comm.push_back({c, {}});
      it = per_comm.end() - 1;
    }
    it->second.push_back(op);
  }
  ncclResult_t first = ncclSuccess;
  for (auto& [c, ops] : per_comm) {
    ncclResult_t r = enqueue(c, ops);
    if (r != ncclSuccess && first == ncclSuccess) first = r;
  }
  return first;
}

__attribute__((visibility("default"))) ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count,
                                                                  ncclDataType_t dtype, ncclRedOp_t op,
                                                                  ncclComm_t comm, cudaStream_t) {
  return issue(comm, OP_ALLREDUCE, send, recv, count, dtype, op, 0);
}

__attribute__((visibility("default"))) ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count,
                                                                  ncclDataType_t dtype, int root,
                                                                  ncclComm_t comm, cudaStream_t) {
  return issue(comm, OP_BROADCAST, send, recv, count, dtype, ncclSum, root);
}

__attribute__((visibility("default"))) ncclResult_t ncclAllGather(const void* send, void* recv, size_t count,
                                                                  ncclDataType_t dtype, ncclComm_t comm,
                                                                  cudaStream_t) {
  return issue(comm, OP_ALLGATHER, send, recv, count, dtype, ncclSum, 0);
}

}  // extern "C"
