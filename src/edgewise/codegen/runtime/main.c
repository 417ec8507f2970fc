/* Demo program: runs the model on int8 inputs and prints each output vector and its argmax.
 *
 * Hosted build: reads samples of EW_INPUT_SIZE bytes from stdin until EOF.
 * -DEW_AUDIO_FRONTEND (a bundle that declares an audio front end):
 *   `model FILE.wav`: streams the recording through ew_stream_push (16-bit mono PCM at the front end's
 *   rate) and prints one line per keyword heard: label, score, time in seconds. On an emulated board the
 *   file is read over semihosting.
 *   `model < clips.pcm`: reads clips of EW_FE_CLIP_SAMPLES 16-bit samples instead (a short last clip is
 *   padded with silence) (embedded: ew_pcm from inputs.h), runs the front end, then the model, per clip.
 * -DEW_SENSOR_FRONTEND (a bundle that declares a sensor front end: spectral features or the raw window):
 *   `model FILE.csv`: streams a recording of readings at the front end's rate through ew_push_samples and
 *   prints one line per window: the time its window ends (s), then the label and its output (dequantized:
 *   a logit, or a probability if the model ends in softmax), or for an anomaly detector "normal"/"anomaly"
 *   and the score. Columns are found by the channel names in a header
 *   line (a timestamp or label column is skipped); without a header they are the channels in order.
 *   Comma, semicolon or tab separated. On an emulated board the file is read over semihosting.
 * -DEW_EMBEDDED_INPUTS: runs the samples compiled in from inputs.h (for boards without stdin; output
 * goes through semihosting's printf).
 * -DEW_COUNT_INSTRUCTIONS (with EW_EMBEDDED_INPUTS, on qemu's mps2 boards run with -icount shift=0): prints
 * "ticks FRONTEND MODEL" per sample instead, read from the board's 25 MHz FPGAIO counter; under
 * -icount shift=0 one instruction is one ns of virtual time, so a tick is 40 instructions.
 */
#include <stdio.h>
#include <string.h>
#include "model.h"
#include "ew_kernels.h"
#ifdef EW_AUDIO_FRONTEND
#include "ew_frontend.h"
#include "ew_stream.h"
#endif

#ifdef EW_SENSOR_FRONTEND
#include <stdlib.h>
#include "ew_sensor.h"
#endif
#ifdef EW_EMBEDDED_INPUTS
#include "inputs.h"
#endif

#ifdef EW_COUNT_INSTRUCTIONS
#define EW_TICKS() (*(volatile uint32_t *)0x40028018u)  /* mps2 FPGAIO COUNTER */
#define EW_COUNTED(call, ticks) do { uint32_t t0_ = EW_TICKS(); call; ticks = EW_TICKS() - t0_; } while (0)
#else
#define EW_COUNTED(call, ticks) do { call; (void)(ticks); } while (0)
#endif

#ifndef EW_COUNT_INSTRUCTIONS
static void print_output(const int8_t *out)
{
    int i;
    for (i = 0; i < EW_OUTPUT_SIZE; i++)
        printf(i ? " %d" : "%d", (int)out[i]);
    printf(" | %d\n", ew_argmax(out, EW_OUTPUT_SIZE));
}
#endif

#ifdef EW_EMBEDDED_INPUTS
static void print_output_or_ticks(const int8_t *out, uint32_t fe, uint32_t model)
{
#ifdef EW_COUNT_INSTRUCTIONS
    (void)out;
    printf("ticks %lu %lu\n", (unsigned long)fe, (unsigned long)model);
#else
    (void)fe;
    (void)model;
    print_output(out);
#endif
}
#endif

#ifdef EW_AUDIO_FRONTEND
static uint32_t le(const unsigned char *b, int n)
{
    uint32_t v = 0;
    while (n--)
        v = v << 8 | b[n];
    return v;
}

static void print_detection(int label, double score, uint32_t time_ms, void *user)
{
    (void)user;
    printf("%s %.4f %.3f\n", label < EW_NUM_LABELS ? ew_labels[label] : "?", score, time_ms / 1000.0);
}

/* A RIFF/WAVE file of 16-bit mono PCM at EW_FE_SAMPLE_RATE, streamed in chunks; 0, or 2 with a reason. */
static int stream_wav(const char *path)
{
    static int16_t chunk[512];
    unsigned char h[12], c[8], fmt[16];
    uint32_t size, left = 0, pushed = 0;
    int have_fmt = 0, data = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        return 2;
    }
    if (fread(h, 1, 12, f) != 12 || memcmp(h, "RIFF", 4) || memcmp(h + 8, "WAVE", 4)) {
        fprintf(stderr, "%s is not a WAV file\n", path);
        fclose(f);
        return 2;
    }
    while (!data && fread(c, 1, 8, f) == 8) {  /* chunks until "data" */
        size = le(c + 4, 4);
        if (!memcmp(c, "fmt ", 4) && size >= 16) {
            if (fread(fmt, 1, 16, f) != 16 || fseek(f, (long)(size - 16 + (size & 1)), SEEK_CUR)) break;
            have_fmt = 1;
        } else if (!memcmp(c, "data", 4)) {
            data = 1;
            left = size;
        } else if (fseek(f, (long)(size + (size & 1)), SEEK_CUR)) {
            break;
        }
    }
    if (!have_fmt || !data || (le(fmt, 2) != 1 && le(fmt, 2) != 0xFFFE) || le(fmt + 2, 2) != 1
        || le(fmt + 4, 4) != EW_FE_SAMPLE_RATE || le(fmt + 14, 2) != 16) {
        fprintf(stderr, "%s: need 16-bit mono PCM at %d Hz (ffmpeg -i IN -ac 1 -ar %d -c:a pcm_s16le OUT.wav)\n",
                path, EW_FE_SAMPLE_RATE, EW_FE_SAMPLE_RATE);
        fclose(f);
        return 2;
    }
    ew_stream_reset();
    while (left >= 2) {
        size_t want = left / 2 < 512 ? left / 2 : 512, n = fread(chunk, sizeof(int16_t), want, f);
        if (n == 0)
            break;
        ew_stream_push(chunk, (int)n, print_detection, NULL);
        pushed += (uint32_t)n;
        left -= (uint32_t)(2 * n);
    }
    memset(chunk, 0, sizeof chunk);
    while (pushed < EW_FE_CLIP_SAMPLES) {  /* a recording shorter than a clip: padded with silence */
        int n = EW_FE_CLIP_SAMPLES - pushed < 512 ? (int)(EW_FE_CLIP_SAMPLES - pushed) : 512;
        ew_stream_push(chunk, n, print_detection, NULL);
        pushed += (uint32_t)n;
    }
    fclose(f);
    return 0;
}
#endif

#ifdef EW_SENSOR_FRONTEND
static void print_window(uint32_t end_sample, const int8_t *out, void *user)
{
    (void)user;
#ifdef EW_ANOMALY_THRESHOLD
    float score = ew_anomaly_score(out);
    printf("%.3f %s %.5f\n", end_sample / EW_FX_RATE_HZ, score > EW_ANOMALY_THRESHOLD ? "anomaly" : "normal",
           (double)score);
#else
    int k = ew_argmax(out, EW_OUTPUT_SIZE);
    printf("%.3f %s %.4f\n", end_sample / EW_FX_RATE_HZ, k < EW_NUM_LABELS ? ew_labels[k] : "?",
           ((double)out[k] - EW_OUTPUT_ZERO_POINT) * EW_OUTPUT_SCALE);
#endif
}

/* The fields of one CSV line, split in place at commas, semicolons or tabs; returns how many. */
static int split_fields(char *line, char **field, int most)
{
    int n = 0;
    char *p = line;
    while (n < most) {
        field[n++] = p;
        while (*p && *p != ',' && *p != ';' && *p != '\t' && *p != '\n' && *p != '\r')
            p++;
        if (*p != ',' && *p != ';' && *p != '\t')
            break;
        *p++ = '\0';
    }
    *p = '\0';
    return n;
}

static int stream_csv(const char *path)
{
    static char line[1024];
    char *field[64];
    int col[EW_FX_CHANNELS], c, n, lineno = 0, header = 0;
    float reading[EW_FX_CHANNELS];
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        return 2;
    }
    for (c = 0; c < EW_FX_CHANNELS; c++)
        col[c] = c;
    ew_sensor_reset();
    while (fgets(line, sizeof line, f)) {
        lineno++;
        n = split_fields(line, field, 64);
        if (lineno == 1 && n > 0 && strtod(field[0], NULL) == 0.0 && field[0][0] != '0' && field[0][0] != '-'
            && field[0][0] != '.') {  /* a header: find the channels by name */
            header = 1;
            for (c = 0; c < EW_FX_CHANNELS; c++) {
                int i;
                col[c] = -1;
                for (i = 0; i < n; i++)
                    if (!strcmp(field[i], ew_fx_channel_names[c]))
                        col[c] = i;
                if (col[c] < 0) {
                    fprintf(stderr, "%s: no column %s in the header\n", path, ew_fx_channel_names[c]);
                    fclose(f);
                    return 2;
                }
            }
            continue;
        }
        if (n == 1 && field[0][0] == '\0')
            continue;  /* a blank line */
        for (c = 0; c < EW_FX_CHANNELS; c++) {
            char *end;
            if (col[c] >= n || (reading[c] = strtof(field[col[c]], &end), end == field[col[c]])) {
                fprintf(stderr, "%s:%d: no number for %s\n", path, lineno, ew_fx_channel_names[c]);
                fclose(f);
                return 2;
            }
        }
        ew_push_samples(reading, 1, print_window, NULL);
    }
    (void)header;
    fclose(f);
    return 0;
}
#endif

int main(int argc, char **argv)
{
    static int8_t in[EW_INPUT_SIZE];
    static int8_t out[EW_OUTPUT_SIZE];
#ifdef EW_AUDIO_FRONTEND
    if (argc > 1)
        return stream_wav(argv[1]);
#endif
#ifdef EW_SENSOR_FRONTEND
    if (argc > 1)
        return stream_csv(argv[1]);
#endif
    (void)argc;
    (void)argv;
#if defined(EW_EMBEDDED_INPUTS) && defined(EW_AUDIO_FRONTEND)
    int s;
    uint32_t fe = 0, model = 0;
    for (s = 0; s < EW_NUM_INPUTS; s++) {  /* PCM clips: the front end, then the model */
        EW_COUNTED(ew_frontend_features(ew_pcm[s], in), fe);
        EW_COUNTED(ew_model_invoke(in, out), model);
        print_output_or_ticks(out, fe, model);
    }
#elif defined(EW_EMBEDDED_INPUTS)
    int s;
    uint32_t model = 0;
    for (s = 0; s < EW_NUM_INPUTS; s++) {
        EW_COUNTED(ew_model_invoke(ew_inputs[s], out), model);
        print_output_or_ticks(out, 0, model);
    }
    (void)in;
#elif defined(EW_AUDIO_FRONTEND)
    static int16_t pcm[EW_FE_CLIP_SAMPLES];
    size_t n;
    while ((n = fread(pcm, sizeof(int16_t), EW_FE_CLIP_SAMPLES, stdin)) > 0) {
        if (n < EW_FE_CLIP_SAMPLES)  /* a recording shorter than a clip: padded with silence */
            memset(pcm + n, 0, (EW_FE_CLIP_SAMPLES - n) * sizeof(int16_t));
        ew_frontend_features(pcm, in);
        ew_model_invoke(in, out);
        print_output(out);
        if (n < EW_FE_CLIP_SAMPLES)
            break;
    }
#else
    while (fread(in, 1, EW_INPUT_SIZE, stdin) == EW_INPUT_SIZE) {
        ew_model_invoke(in, out);
        print_output(out);
    }
#endif
    return 0;
}
