// Stand-in for libnccl (NCCL 2.30 API subset) for the CPU emulation: communicators across
// processes of one machine over loopback TCP, so CI runs data-parallel training without GPUs.
// Built by build.rs as OUT_DIR/emu/libnccl.so.2 (SONAME libnccl.so, the first name cudarc's
// loader asks for); src/backend/cuda/nccl.rs loads it by full path when the CUDA emulation is
// in use, so cudarc's own dlopen("libnccl.so") returns it. Never loaded beside a real GPU.
//
// Design: ncclGetUniqueId starts a hub thread in the calling process, listening on
// 127.0.0.1:<ephemeral port>; the 128-byte id carries the port, the creator's pid and a random
// nonce. ncclCommInitRank connects to the hub and waits until all nranks ranks have joined.
// Every collective sends (header, payload) to the hub, which reads the ranks in rank order,
// checks that all called the same collective (kind, type, count, root, sequence number: NCCL's
// "same order on every rank" rule), combines in rank order ((r0 + r1) + r2 ...; identical bits
// on every rank and from run to run) and sends the result back. Calls complete before they
// return (as every stream operation of the emulation does). Between ncclGroupStart and
// ncclGroupEnd calls are queued and issued in order at the outermost ncclGroupEnd.
//
// Failures: a rank whose connection closes (process died, ncclCommAbort) or that sends nothing
// for HRM_NCCL_EMU_TIMEOUT_S seconds (default 600) makes the hub fail the pending collective
// on every other rank with ncclRemoteError; ncclGetLastError says which rank and why. Device
// pointers are checked against the emulation's live allocations.
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

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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
      char b[160];
      snprintf(b, sizeof b, "ncclCommInitRank: only %d of %d ranks joined within %.0f s", joined,
               nranks, timeout);
      hub_fail(peers, b);
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

thread_local int t_group_depth = 0;
thread_local std::vector<std::pair<ncclComm_t, Pending>> t_queue;

}  // namespace

struct ncclComm {
  std::atomic<int> fd{-1};
  int rank = 0;
  int nranks = 0;
  uint64_t seq = 0;
  std::atomic<bool> aborted{false};
  std::atomic<bool> busy{false};
  std::string error;
};

namespace {

ncclResult_t fail(ncclComm_t comm, ncclResult_t code, const std::string& msg) {
  if (comm) comm->error = msg;
  set_error(msg);
  return code;
}

bool dev_ok(const void* p, size_t bytes) {
  return bytes == 0 || emu::mem_range_ok(reinterpret_cast<uint64_t>(p), bytes);
}

ncclResult_t run(ncclComm_t comm, const Pending& op) {
  if (comm->aborted.load()) return fail(comm, ncclInvalidUsage, "the communicator was aborted");
  if (comm->fd < 0) return fail(comm, ncclRemoteError, "the communicator failed earlier: " + comm->error);
  comm->busy = true;
  Header h = op.h;
  h.seq = comm->seq++;
  std::string why;
  uint64_t n = send_bytes(h, comm->rank);
  bool ok = write_full(comm->fd, &h, sizeof h, &why) &&
            (n == 0 || write_full(comm->fd, op.send, n, &why));
  Reply rep{};
  ok = ok && read_full(comm->fd, &rep, sizeof rep, timeout_s() + 5, &comm->aborted, &why);
  std::string msg;
  if (ok && rep.msg_len > 0) {
    msg.resize(rep.msg_len);
    ok = read_full(comm->fd, msg.data(), rep.msg_len, 30, &comm->aborted, &why);
  }
  if (ok && rep.status == ncclSuccess) {
    uint64_t want = h.op == OP_ALLGATHER ? h.count * type_size(h.dtype) * comm->nranks
                                         : h.count * type_size(h.dtype);
    if (rep.payload != want) {
      ok = false;
      why = "protocol error: result of " + std::to_string(rep.payload) + " bytes, expected " +
            std::to_string(want);
    } else {
      std::vector<char> buf(want);
      ok = read_full(comm->fd, buf.data(), want, 60, &comm->aborted, &why);
      if (ok) memmove(op.recv, buf.data(), want);
    }
  }
  comm->busy = false;
  if (ok && rep.status == ncclSuccess) return ncclSuccess;
  if (ok) why = msg;  // the hub's reason
  close(comm->fd);
  comm->fd = -1;
  return fail(comm, ncclRemoteError,
              std::string(op_name(h.op)) + " on rank " + std::to_string(comm->rank) + ": " + why);
}

ncclResult_t issue(ncclComm_t comm, uint32_t op, const void* send, void* recv, size_t count,
                   ncclDataType_t dtype, ncclRedOp_t redop, int root) {
  if (!comm) return fail(nullptr, ncclInvalidArgument, std::string(op_name(op)) + ": null communicator");
  size_t ts = type_size(dtype);
  if (ts == 0) return fail(comm, ncclInvalidArgument, std::string(op_name(op)) + ": unsupported data type");
  if (op == OP_ALLREDUCE) {
    if (redop > ncclMin) return fail(comm, ncclInvalidArgument, "ncclAllReduce: unsupported reduction op");
    if (dtype == ncclFloat16 || dtype == ncclBfloat16)
      return fail(comm, ncclInvalidArgument, "ncclAllReduce: 16-bit floats are not emulated");
  }
  if (op == OP_BROADCAST && (root < 0 || root >= comm->nranks))
    return fail(comm, ncclInvalidArgument, "ncclBroadcast: root outside the communicator");
  size_t in_bytes = count * ts;
  size_t out_bytes = op == OP_ALLGATHER ? in_bytes * comm->nranks : in_bytes;
  bool needs_send = op != OP_BROADCAST || root == comm->rank;
  if ((needs_send && !dev_ok(send, in_bytes)) || !dev_ok(recv, out_bytes))
    return fail(comm, ncclInvalidArgument,
                std::string(op_name(op)) + ": a buffer is not inside one live device allocation");
  Pending p{Header{0, op, static_cast<uint32_t>(dtype), static_cast<uint32_t>(redop), root, count},
            send, recv};
  if (t_group_depth > 0) {
    t_queue.emplace_back(comm, p);
    return ncclSuccess;
  }
  return run(comm, p);
}

}  // namespace

extern "C" {

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
  if (comm && !comm->error.empty()) return comm->error.c_str();
  static thread_local std::string copy;
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

__attribute__((visibility("default"))) ncclResult_t ncclCommInitRank(ncclComm_t* out, int nranks,
                                                                     ncclUniqueId id, int rank) {
  if (!out) return ncclInvalidArgument;
  *out = nullptr;
  IdData d;
  memcpy(&d, id.internal, sizeof d);
  if (memcmp(d.magic, kMagic, 8) != 0)
    return fail(nullptr, ncclInvalidArgument, "ncclCommInitRank: not a unique id of this NCCL stand-in");
  if (nranks < 1 || rank < 0 || rank >= nranks)
    return fail(nullptr, ncclInvalidArgument,
                "ncclCommInitRank: rank " + std::to_string(rank) + " of " + std::to_string(nranks));
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(d.port));
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    std::string e = strerror(errno);
    if (fd >= 0) close(fd);
    return fail(nullptr, ncclSystemError,
                "ncclCommInitRank: cannot reach the id's creator (pid " + std::to_string(d.pid) +
                    ") on 127.0.0.1:" + std::to_string(d.port) + ": " + e);
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  Hello h{};
  memcpy(h.magic, kMagic, 8);
  h.nonce = d.nonce;
  h.nranks = nranks;
  h.rank = rank;
  h.pid = static_cast<int32_t>(getpid());
  std::string why;
  Reply rep{};
  if (!write_full(fd, &h, sizeof h, &why) || !read_full(fd, &rep, sizeof rep, timeout_s() + 5, nullptr, &why)) {
    close(fd);
    return fail(nullptr, ncclSystemError, "ncclCommInitRank: rank " + std::to_string(rank) + ": " + why);
  }
  if (rep.status != ncclSuccess) {
    std::string msg(rep.msg_len, '\0');
    read_full(fd, msg.data(), rep.msg_len, 30, nullptr, &why);
    close(fd);
    return fail(nullptr, static_cast<ncclResult_t>(rep.status), msg);
  }
  auto* c = new ncclComm;
  c->fd = fd;
  c->rank = rank;
  c->nranks = nranks;
  *out = c;
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  if (!comm || !count) return ncclInvalidArgument;
  *count = comm->nranks;
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  if (!comm || !rank) return ncclInvalidArgument;
  *rank = comm->rank;
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int* device) {
  if (!comm || !device) return ncclInvalidArgument;
  *device = 0;
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  return comm ? ncclSuccess : ncclInvalidArgument;
}

// Orderly end: the hub waits for every rank's destroy.
__attribute__((visibility("default"))) ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (!comm) return ncclSuccess;
  if (comm->fd >= 0 && !comm->aborted.load()) {
    Header h{comm->seq++, OP_DESTROY, 0, 0, 0, 0};
    std::string why;
    write_full(comm->fd, &h, sizeof h, &why);
    close(comm->fd);
  }
  delete comm;
  return ncclSuccess;
}

// May be called from another thread while a collective blocks on this communicator: that call
// then returns an error, and the peers' pending collectives fail naming this rank. The small
// communicator object is not freed here (the blocked call may still be using it).
__attribute__((visibility("default"))) ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (!comm) return ncclSuccess;
  // Only atomics and the socket are touched here: the blocked call may be writing the error.
  comm->aborted = true;
  int fd = comm->fd;
  if (fd >= 0) shutdown(fd, SHUT_RDWR);
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t ncclGroupStart() {
  t_group_depth++;
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t ncclGroupEnd() {
  if (t_group_depth == 0) return fail(nullptr, ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
  if (--t_group_depth > 0) return ncclSuccess;
  auto queue = std::move(t_queue);
  t_queue.clear();
  ncclResult_t first = ncclSuccess;
  for (auto& [comm, op] : queue) {
    ncclResult_t r = run(comm, op);
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
