{{- define "infergate.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "infergate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "infergate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "infergate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "infergate.labels" -}}
{{ include "infergate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The shared registry's location and credentials (Deployment and batch Job). */}}
{{- define "infergate.registryEnv" -}}
{{- if .Values.sharedRegistry.enabled }}
- name: INFERGATE_MODELS__REGISTRY_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.sharedRegistry.secretName }}
      key: database-url
- name: INFERGATE_MODELS__REGISTRY_STORE_URL
  value: {{ .Values.sharedRegistry.storeUrl | quote }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.sharedRegistry.secretName }}
      key: access-key-id
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.sharedRegistry.secretName }}
      key: secret-access-key
- name: AWS_REGION
  value: {{ .Values.sharedRegistry.region | quote }}
{{- with .Values.sharedRegistry.endpoint }}
- name: AWS_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}
