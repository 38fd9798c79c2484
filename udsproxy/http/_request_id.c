/* udsproxy.http._request_id: x-request-id values (random version-4 UUIDs) in C.
 *
 * header_mutation.request_id's fast path in the compiled form: about 5k instructions per request
 * in Python (a 128-bit draw, a hex format, five slices and a join), a few hundred here. Random
 * bytes come from getrandom(2), 4 KiB (256 ids) per call; a forked child discards what its parent
 * had drawn (pthread_atfork), so workers never share ids.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <sys/random.h>

#define POOL 4096
static unsigned char pool[POOL];
static size_t used = POOL; /* empty: drawn on first use */

static void
discard(void)
{
    used = POOL;
}

static PyObject *
request_id(PyObject *self, PyObject *unused)
{
    if (used + 16 > POOL) {
        size_t got = 0;
        while (got < POOL) {
            ssize_t r = getrandom(pool + got, POOL - got, 0);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                return PyErr_SetFromErrno(PyExc_OSError);
            }
            got += (size_t)r;
        }
        used = 0;
    }
    unsigned char *b = pool + used;
    used += 16;
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* variant 10xx (RFC 9562) */
    static const char hex[] = "0123456789abcdef";
    PyObject *out = PyBytes_FromStringAndSize(NULL, 36);
    if (out == NULL)
        return NULL;
    char *o = PyBytes_AS_STRING(out);
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        *o++ = hex[b[i] >> 4];
        *o++ = hex[b[i] & 15];
    }
    return out;
}

static PyMethodDef methods[] = {
    {"request_id", request_id, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "udsproxy.http._request_id", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__request_id(void)
{
    if (pthread_atfork(NULL, NULL, discard) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return NULL;
    }
    return PyModule_Create(&module);
}
